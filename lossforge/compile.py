"""sympy -> torch (and numpy): compile a loss expression into plain functions, from the operator table.

The result is a tree of small closures (no ``eval``/``exec``, nothing generated as source), calling the
torch forms of the table's operators. Float constants become entries of a ``constants`` tensor, so they
can be registered as buffers or trainable parameters. Compiled functions are cached by the exact sympy
form, so a candidate seen again costs nothing.

:func:`compile_value_and_grad` builds the same tree over the table's numpy forms, carrying each node's
derivative along ``y_pred`` with its value (forward mode: the loss has one differentiated input). The fast
trainer uses it: a numpy operation on a few hundred values costs about a quarter of a torch one, and no
autograd graph is built for the loss.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from functools import lru_cache, reduce
from typing import Callable, Sequence

import numpy as np
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
        base, n = children[0], _exponent(e)
        return lambda p, r, c: base(p, r, c) ** n
    head = type(e)
    if head in _TORCH_BY_HEAD:
        torch_fn = _TORCH_BY_HEAD[head]
        return lambda p, r, c: torch_fn(*(f(p, r, c) for f in children))
    raise ExpressionError(f"no torch form for {head.__name__}; add it to the operator table")


def _exponent(power: sympy.Pow) -> int:
    """The exponent of a power node: a positive integer, as canonicalisation makes them (x*x -> x**2)."""
    exponent = power.args[1]
    if not (exponent.is_Integer and int(exponent) > 0):
        raise ExpressionError(f"power {exponent} cannot come from the operator table")
    return int(exponent)


# --- numpy: value and derivative along y_pred -------------------------------------------------------------

Array = np.ndarray
#: ``fn(y_pred, y_real, constants) -> (value, d value / d y_pred or None)`` on float32 arrays.
GradNode = Callable[[Array, Array, tuple], tuple]

_JVP_BY_HEAD = {op.sympy_head: op.numpy_jvp for op in OPERATORS.values() if op.numpy_jvp is not None}


@dataclass(frozen=True)
class GradKernel:
    """A compiled loss that returns its elementwise value and derivative with respect to ``y_pred``.

    ``kernel(y_pred, y_real, constants)`` takes float32 arrays of one shape and float constants; the
    derivative is an array of that shape (zeros where the loss does not depend on ``y_pred``).
    """

    fn: GradNode
    constants: tuple[float, ...]

    def __call__(self, y_pred: Array, y_real: Array, constants: Sequence[float] | None = None) -> tuple[Array, Array]:
        values = tuple(np.float32(c) for c in (self.constants if constants is None else constants))
        value, derivative = self.fn(y_pred, y_real, values)
        return _full(value, y_pred), np.zeros_like(y_pred) if derivative is None else _full(derivative, y_pred)


def _full(x: Array | np.float32, like: Array) -> Array:
    """``x`` as an array of ``like``'s shape and dtype (a number where the expression folded to one)."""
    if isinstance(x, np.ndarray) and x.shape == like.shape and x.dtype == like.dtype:
        return x
    return np.broadcast_to(np.asarray(x, dtype=like.dtype), like.shape)


def compile_value_and_grad(expr: sympy.Expr) -> GradKernel:
    """Compile a sympy loss into a numpy :class:`GradKernel` (same constants, same order as
    :func:`compile_expr`)."""
    return _grad_cached(sympy.srepr(expr), expr)


@lru_cache(maxsize=4096)
def _grad_cached(_srepr: str, expr: sympy.Expr) -> GradKernel:
    constants: list[float] = []
    fn = _build_grad(expr, constants)
    return GradKernel(fn, tuple(constants))


def _build_grad(e: sympy.Expr, constants: list[float]) -> GradNode:
    if e.is_Symbol:
        if e.name == "y_pred":
            return lambda p, r, c: (p, _ONE)
        if e.name == "y_real":
            return lambda p, r, c: (r, None)
        raise ExpressionError(f"unknown symbol {e.name!r} in expression")
    if e.is_Float:
        i = len(constants)
        constants.append(float(e))
        return lambda p, r, c: (c[i], None)
    if e.is_Number:
        value = np.float32(float(e))
        return lambda p, r, c: (value, None)
    children = [_build_grad(a, constants) for a in e.args]
    if e.is_Add:
        return lambda p, r, c: _sum([f(p, r, c) for f in children])
    if e.is_Mul:
        return lambda p, r, c: _product([f(p, r, c) for f in children])
    if e.is_Pow:
        base, n = children[0], _exponent(e)
        return lambda p, r, c: _power(base(p, r, c), n)
    jvp = _JVP_BY_HEAD.get(type(e))
    if jvp is None:
        raise ExpressionError(f"no numpy form for {type(e).__name__}; add it to the operator table")

    if len(children) == 1:
        (only,) = children

        def unary(p: Array, r: Array, c: tuple) -> tuple:
            return jvp(*only(p, r, c))

        return unary
    left, right = children

    def binary(p: Array, r: Array, c: tuple) -> tuple:
        (a, da), (b, db) = left(p, r, c), right(p, r, c)
        return jvp(a, b, da, db)

    return binary


#: Marks the derivative of ``y_pred`` itself (1 everywhere) without allocating an array of ones.
_ONE = np.float32(1)


def _sum(terms: list[tuple]) -> tuple:
    value = derivative = None
    for v, d in terms:
        value = v if value is None else value + v
        if d is not None:
            derivative = d if derivative is None else derivative + d
    return value, derivative


def _product(factors: list[tuple]) -> tuple:
    """d(prod f_i) = sum_i d f_i * prod_{j != i} f_j, over the factors that depend on y_pred."""
    value = reduce(operator.mul, (v for v, _ in factors))
    derivative = None
    for i, (_, d) in enumerate(factors):
        if d is None:
            continue
        others = [v for j, (v, _) in enumerate(factors) if j != i]
        term = d * reduce(operator.mul, others) if others else d
        derivative = term if derivative is None else derivative + term
    return value, derivative


def _power(base: tuple, n: int) -> tuple:
    v, d = base
    value = v * v if n == 2 else v ** n
    if d is None:
        return value, None
    return value, d * (np.float32(n) * (v if n == 2 else v ** (n - 1)))
