"""sympy -> torch (and numpy): the compiled forms of a loss, from its one lowering.

:func:`lossforge.lowering.lower` turns the sympy expression into a Program; the backends loop over it:
:mod:`lossforge.backends.torch_closure` (:func:`compile_expr`) and :mod:`lossforge.backends.numpy_kernel`
(:func:`compile_value_and_grad`). This module keeps the names the rest of lossforge imports.
"""

from __future__ import annotations

from lossforge.backends.numpy_kernel import GradKernel, GradNode, _grad_cached, compile_value_and_grad
from lossforge.backends.torch_closure import CompiledExpression, Node, _compile_cached, compile_expr
from lossforge.lowering import _lower_cached


def clear_caches() -> None:
    """Forget every compiled form and lowering (for benchmarks that time compilation)."""
    for cached in (_compile_cached, _grad_cached, _lower_cached):
        cached.cache_clear()


# _compile_cached and _grad_cached stay importable from here (scripts/bench.py clears them)
__all__ = ["CompiledExpression", "GradKernel", "GradNode", "Node", "clear_caches", "compile_expr",
           "compile_value_and_grad"]
