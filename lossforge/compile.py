"""sympy -> torch (and numpy): the compiled forms of a loss, from its one lowering.

:func:`lossforge.lowering.lower` turns the sympy expression into a Program; the backends loop over it:
:mod:`lossforge.backends.torch_closure` (:func:`compile_expr`) and :mod:`lossforge.backends.numpy_kernel`
(:func:`compile_value_and_grad`). This module keeps the names the rest of lossforge imports.
"""

from __future__ import annotations

from lossforge.backends.numpy_kernel import GradKernel, GradNode, compile_value_and_grad
from lossforge.backends.torch_closure import CompiledExpression, Node, compile_expr

__all__ = ["CompiledExpression", "GradKernel", "GradNode", "Node", "compile_expr", "compile_value_and_grad"]
