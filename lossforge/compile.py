"""sympy -> torch: compile a loss expression into a plain torch function, from the operator table.

The result is a tree of small closures (no ``eval``/``exec``, nothing generated as source), calling the
torch forms of the table's operators. Float constants become entries of a ``constants`` tensor, so they
can be registered as buffers or trainable parameters. Compiled functions are cached by the exact sympy
form, so a candidate seen again costs nothing.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from functools import lru_cache, reduce
from typing import Callable

import sympy
import torch

from lossforge.errors import ExpressionError
from lossforge.operators import OPERATORS

Node = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

#: sympy head -> torch function, derived from the table (sum/product heads are n-ary in sympy).
_TORCH_BY_HEAD: dict[type, Callable[..., torch.Tensor]] = {
    op.sympy_head: op.torch_form for op in OPERATORS.values() if op.sympy_head is not None
}


@dataclass(frozen=True)
class CompiledExpression:
    """A compiled loss: ``fn(y_pred, y_real, constants) -> elementwise loss`` and its initial constants."""

    fn: Node
    constants: tuple[float, ...]

    def __call__(self, y_pred: torch.Tensor, y_real: torch.Tensor, constants: torch.Tensor | None = None):
        if constants is None:
            constants = torch.tensor(self.constants, dtype=y_pred.dtype, device=y_pred.device)
        out = self.fn(y_pred, y_real, constants)
        if not isinstance(out, torch.Tensor) or out.dim() == 0:
            # a loss that folds to a number still gives one value per element (and fails the gradient checks)
            out = out + torch.zeros_like(y_pred)
        return out


def compile_expr(expr: sympy.Expr) -> CompiledExpression:
    """Compile a sympy expression over ``y_pred``/``y_real`` built from the table's operators."""
    return _compile_cached(sympy.srepr(expr), expr)


@lru_cache(maxsize=4096)
def _compile_cached(_srepr: str, expr: sympy.Expr) -> CompiledExpression:
    constants: list[float] = []
    fn = _build(expr, constants)
    return CompiledExpression(fn, tuple(constants))


def _build(e: sympy.Expr, constants: list[float]) -> Node:
    if e.is_Symbol:
        if e.name == "y_pred":
            return lambda p, r, c: p
        if e.name == "y_real":
            return lambda p, r, c: r
        raise ExpressionError(f"unknown symbol {e.name!r} in expression")
    if e.is_Float:
        i = len(constants)
        constants.append(float(e))
        return lambda p, r, c: c[i]
    if e.is_Number:  # integers from canonicalisation (2*x, x**2) are structure, not tunable constants
        # (numbers come first in sympy's sums and products, so the n-ary nodes use Python's + and *)
        value = float(e)
        return lambda p, r, c: value
    children = [_build(a, constants) for a in e.args]
    if e.is_Add:
        return lambda p, r, c: reduce(operator.add, (f(p, r, c) for f in children))
    if e.is_Mul:
        return lambda p, r, c: reduce(operator.mul, (f(p, r, c) for f in children))
    if e.is_Pow:
        exponent = e.args[1]
        if not (exponent.is_Integer and int(exponent) > 0):
            raise ExpressionError(f"power {exponent} cannot come from the operator table")
        base, n = children[0], int(exponent)
        return lambda p, r, c: base(p, r, c) ** n
    head = type(e)
    if head in _TORCH_BY_HEAD:
        torch_fn = _TORCH_BY_HEAD[head]
        return lambda p, r, c: torch_fn(*(f(p, r, c) for f in children))
    raise ExpressionError(f"no torch form for {head.__name__}; add it to the operator table")
