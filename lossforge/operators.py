"""The operator table: the one place each operator is defined.

Every operator is one :class:`Operator` row: its name, arity, sympy form, torch form, LaTeX template and
its protected semantics. The DEAP primitive set, the tree -> sympy translation, the sympy -> torch compiler,
the expression parser and the exported ``.py`` modules are all derived from this table, so adding an
operator means adding one row (plus, for a protected one, its sympy function class below).

Protected semantics (the values where the plain operator is undefined), documented once:

* ``divide(a, b)``: ``a / b`` where ``|b| >= DIV_EPS``; otherwise ``b`` is replaced by ``±DIV_EPS`` (sign of
  ``b``, ``+`` at 0). Continuous except at ``b = 0``, never infinite, gradient kept with respect to ``a``.
* ``sqrt(a)``: ``sqrt(max(|a|, SQRT_EPS))``: defined for negatives, and the clamp keeps the gradient finite
  at 0 (it is 0 below the clamp instead of infinite).
* ``log(a)``: ``log(max(|a|, LOG_EPS))``: defined for negatives and 0 (``log(0) = log(LOG_EPS) ≈ -27.6``).
* ``exp(a)``: ``exp(min(a, EXP_MAX))``: no overflow to infinity (``exp(EXP_MAX) ≈ 1.1e13``).
* ``plus``, ``minus``, ``multiply``, ``sin``, ``cos`` are total and need no protection.

sympy must never rewrite a protected operator into something with other values (a protected ``x/x`` is not
always 1; a protected ``log`` of a product is not a sum of logs), so each protected operator is its own
sympy ``Function`` whose automatic evaluation applies only exact identities: numeric arguments are
evaluated with the protected semantics, and ``divide`` by a numeric constant becomes a multiplication.
"""

from __future__ import annotations

import math
import operator as _pyop
from dataclasses import dataclass
from functools import reduce
from typing import Any, Callable, Sequence

import numpy as np
import sympy
import torch

from lossforge.errors import ExpressionError

DIV_EPS = 1e-6
SQRT_EPS = 1e-12
LOG_EPS = 1e-12
EXP_MAX = 30.0
#: Bound on every constant of a loss, written or folded (a folded 1e192 or oo is refused, see lowering).
MAX_CONSTANT = 1e6


# --- torch forms (also copied verbatim into exported .py modules, so they need only torch) -------------


def protected_div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a / b`` with ``|b|`` clamped to at least DIV_EPS (sign kept, ``+`` at 0)."""
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    eps = torch.full_like(b, DIV_EPS)
    small = b.abs() < DIV_EPS
    return a / torch.where(small, torch.where(b < 0, -eps, eps), b)


def protected_sqrt(a: torch.Tensor) -> torch.Tensor:
    """``sqrt(max(|a|, SQRT_EPS))``."""
    return torch.sqrt(torch.clamp(torch.as_tensor(a).abs(), min=SQRT_EPS))


def protected_log(a: torch.Tensor) -> torch.Tensor:
    """``log(max(|a|, LOG_EPS))``."""
    return torch.log(torch.clamp(torch.as_tensor(a).abs(), min=LOG_EPS))


def protected_exp(a: torch.Tensor) -> torch.Tensor:
    """``exp(min(a, EXP_MAX))``."""
    return torch.exp(torch.clamp(torch.as_tensor(a), max=EXP_MAX))


# --- numpy forms with their derivative (the fast trainer's loss kernels, see compile.compile_value_and_grad) -
#
# Each takes the arguments' values, then their derivatives along ``y_pred`` (None where an argument does
# not depend on it): ``(a, da)`` or ``(a, b, da, db)``, and returns ``(value, derivative or None)``. The
# derivatives are those torch's autograd takes through the torch forms above (zero where a clamp or the
# ``where`` cuts the gradient), so both trainers follow the same gradient. Arrays are float32; the epsilons are float32 scalars so nothing is
# promoted to float64.

Array = np.ndarray
Jvp = tuple[Array, "Array | None"]
_DIV_EPS32, _SQRT_EPS32, _LOG_EPS32, _EXP_MAX32 = (np.float32(v) for v in (DIV_EPS, SQRT_EPS, LOG_EPS, EXP_MAX))


def _scaled(derivative: Array | None, factor: Array) -> Array | None:
    return None if derivative is None else derivative * factor


def numpy_div(a: Array, b: Array, da: Array | None, db: Array | None) -> Jvp:
    """``protected_div`` and its derivative: d(a/b) = (da - value * db) / b, with no gradient through a
    clamped ``b``."""
    small = np.abs(b) < _DIV_EPS32
    denominator = np.where(small, np.where(b < 0, -_DIV_EPS32, _DIV_EPS32), b)
    value = a / denominator
    if db is None:
        return value, _scaled(da, 1 / denominator)
    through_b = np.where(small, np.float32(0), value * db)
    return value, ((-through_b) if da is None else (da - through_b)) / denominator


def numpy_sqrt(a: Array, da: Array | None) -> Jvp:
    """``protected_sqrt`` and its derivative ``sign(a) / (2 sqrt|a|)`` (0 below the clamp)."""
    magnitude = np.abs(a)
    value = np.sqrt(np.maximum(magnitude, _SQRT_EPS32))
    if da is None:
        return value, None
    return value, da * np.where(magnitude >= _SQRT_EPS32, np.sign(a) / (2 * value), np.float32(0))


def numpy_log(a: Array, da: Array | None) -> Jvp:
    """``protected_log`` and its derivative ``1 / a`` (0 below the clamp)."""
    magnitude = np.abs(a)
    value = np.log(np.maximum(magnitude, _LOG_EPS32))
    if da is None:
        return value, None
    safe = np.where(magnitude >= _LOG_EPS32, a, np.float32(1))
    return value, da * np.where(magnitude >= _LOG_EPS32, 1 / safe, np.float32(0))


def numpy_exp(a: Array, da: Array | None) -> Jvp:
    """``protected_exp`` and its derivative (the value itself; 0 above the clamp)."""
    value = np.exp(np.minimum(a, _EXP_MAX32))
    return value, None if da is None else da * np.where(a <= _EXP_MAX32, value, np.float32(0))


def numpy_sin(a: Array, da: Array | None) -> Jvp:
    """``sin`` and its derivative."""
    return np.sin(a), _scaled(da, np.cos(a))


def numpy_cos(a: Array, da: Array | None) -> Jvp:
    """``cos`` and its derivative."""
    return np.cos(a), _scaled(da, -np.sin(a))


def numpy_sum(terms: Sequence[Jvp]) -> Jvp:
    """A sum of any number of terms and its derivative."""
    value = derivative = None
    for v, d in terms:
        value = v if value is None else value + v
        if d is not None:
            derivative = d if derivative is None else derivative + d
    return value, derivative


def numpy_product(factors: Sequence[Jvp]) -> Jvp:
    """A product and its derivative: d(prod f_i) = sum_i d f_i * prod_{j != i} f_j, over the factors that
    depend on y_pred."""
    value = reduce(_pyop.mul, (v for v, _ in factors))
    derivative = None
    for i, (_, d) in enumerate(factors):
        if d is None:
            continue
        others = [v for j, (v, _) in enumerate(factors) if j != i]
        term = d * reduce(_pyop.mul, others) if others else d
        derivative = term if derivative is None else derivative + term
    return value, derivative


def numpy_power(base: Jvp, n: int) -> Jvp:
    """``base ** n`` (positive integer ``n``) and its derivative."""
    v, d = base
    value = v * v if n == 2 else v ** n
    if d is None:
        return value, None
    return value, d * (np.float32(n) * (v if n == 2 else v ** (n - 1)))


# --- sympy forms of the protected operators -----------------------------------------------------------


def _latex_number(value: float) -> str:
    """``1e-06`` -> ``10^{-6}``, ``30.0`` -> ``30``: the guards' constants as LaTeX."""
    mantissa, _, exponent = f"{value:g}".partition("e")
    if not exponent:
        return mantissa
    power = f"10^{{{int(exponent)}}}"
    return power if mantissa == "1" else rf"{mantissa} \cdot {power}"


def _is_num(x: sympy.Expr) -> bool:
    return bool(x.is_Number)


class _Protected(sympy.Function):
    """Printing shared by the protected operators: their table name in text, a template in LaTeX."""

    printed_name = ""
    latex_template = ""

    def _sympystr(self, printer) -> str:
        return f"{self.printed_name}({', '.join(printer._print(a) for a in self.args)})"

    def _latex(self, printer, exp=None) -> str:
        # the guard is part of the formula (a protected x/x is not 1): shown with its epsilon or cap
        body = self.latex_template % dict(zip("ab", (printer._print(a) for a in self.args)))
        return body if exp is None else r"\left(%s\right)^{%s}" % (body, exp)


class ProtectedDiv(_Protected):
    """sympy form of ``divide``: evaluates only exact identities (see module docstring)."""

    nargs = 2
    printed_name = "div"
    # sgn₊ is the sign with sgn₊(0) = +1: |b| < DIV_EPS becomes ±DIV_EPS
    latex_template = r"\frac{%%(a)s}{\operatorname{sgn}_{+}\left(%%(b)s\right) \max\left(\left|%%(b)s\right|, %s\right)}" % (
        _latex_number(DIV_EPS))

    @classmethod
    def eval(cls, a: sympy.Expr, b: sympy.Expr):  # noqa: D102 - sympy hook
        if _is_num(b):
            bf = float(b)
            safe = bf if abs(bf) >= DIV_EPS else math.copysign(DIV_EPS, bf) if bf != 0 else DIV_EPS
            return a * sympy.Float(1.0 / safe)
        if a == 0:
            return sympy.Integer(0)
        return None


class ProtectedSqrt(_Protected):
    """sympy form of ``sqrt``."""

    nargs = 1
    printed_name = "sqrt"
    latex_template = r"\sqrt{\max\left(\left|%%(a)s\right|, %s\right)}" % _latex_number(SQRT_EPS)

    @classmethod
    def eval(cls, a: sympy.Expr):  # noqa: D102
        if _is_num(a):
            return sympy.Float(math.sqrt(max(abs(float(a)), SQRT_EPS)))
        return None


class ProtectedLog(_Protected):
    """sympy form of ``log``."""

    nargs = 1
    printed_name = "log"
    latex_template = r"\log{\max\left(\left|%%(a)s\right|, %s\right)}" % _latex_number(LOG_EPS)

    @classmethod
    def eval(cls, a: sympy.Expr):  # noqa: D102
        if _is_num(a):
            return sympy.Float(math.log(max(abs(float(a)), LOG_EPS)))
        return None


class ProtectedExp(_Protected):
    """sympy form of ``exp``."""

    nargs = 1
    printed_name = "exp"
    latex_template = r"e^{\min\left(%%(a)s, %s\right)}" % _latex_number(EXP_MAX)

    @classmethod
    def eval(cls, a: sympy.Expr):  # noqa: D102
        if _is_num(a):
            return sympy.Float(math.exp(min(float(a), EXP_MAX)))
        return None


def _folding(head: type, fn: Callable[[float], float]) -> Callable[[sympy.Expr], sympy.Expr]:
    """sympy's ``sin``/``cos``, but a number in gives a Float out: sympy keeps ``sin(1)`` symbolic, and a
    number where the compiled loss expects a tensor would reach ``torch.sin`` as a Python float."""
    def build(a: sympy.Expr) -> sympy.Expr:
        return sympy.Float(fn(float(a))) if a.is_number else head(a)

    return build


# --- the table ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Operator:
    """One operator: everything lossforge needs to build, translate, compile and print it."""

    name: str
    arity: int
    sympy_form: Callable[..., sympy.Expr]
    #: the sympy head that ``sympy_form`` produces (Add, Mul, a function class); None if it folds away
    sympy_head: type | None
    torch_form: Callable[..., torch.Tensor]
    #: infix symbol for the parser/printer (``+``) or None for function-call syntax
    infix: str | None
    protected: str
    description: str
    #: value and derivative along y_pred in numpy, for function heads; sums, products and powers are
    #: differentiated by the compiler itself (they are n-ary in sympy)
    numpy_jvp: Callable[..., tuple] | None = None


OPERATORS: dict[str, Operator] = {
    op.name: op
    for op in [
        Operator("plus", 2, lambda a, b: a + b, sympy.Add, torch.add, "+", "", "a + b"),
        Operator("minus", 2, lambda a, b: a - b, None, torch.sub, "-", "", "a - b"),
        Operator("multiply", 2, lambda a, b: a * b, sympy.Mul, torch.mul, "*", "", "a * b"),
        Operator(
            "divide", 2, ProtectedDiv, ProtectedDiv, protected_div, "/",
            f"|b| < {DIV_EPS:g} is replaced by ±{DIV_EPS:g}", "protected a / b", numpy_div,
        ),
        Operator(
            "sqrt", 1, ProtectedSqrt, ProtectedSqrt, protected_sqrt, None,
            f"sqrt(max(|a|, {SQRT_EPS:g}))", "protected square root", numpy_sqrt,
        ),
        Operator(
            "log", 1, ProtectedLog, ProtectedLog, protected_log, None,
            f"log(max(|a|, {LOG_EPS:g}))", "protected natural logarithm", numpy_log,
        ),
        Operator(
            "exp", 1, ProtectedExp, ProtectedExp, protected_exp, None,
            f"exp(min(a, {EXP_MAX:g}))", "protected exponential", numpy_exp,
        ),
        Operator("sin", 1, _folding(sympy.sin, math.sin), sympy.sin, torch.sin, None, "", "sine", numpy_sin),
        Operator("cos", 1, _folding(sympy.cos, math.cos), sympy.cos, torch.cos, None, "", "cosine", numpy_cos),
    ]
}

#: Names accepted in function-call syntax by the parser: the table's names plus the printed short forms.
FUNCTION_ALIASES: dict[str, str] = {"div": "divide", "add": "plus", "sub": "minus", "mul": "multiply"}

#: The two input variables of every loss.
VARIABLES = ("y_pred", "y_real")


def operator(name: str) -> Operator:
    """The table row for ``name`` (aliases accepted); KeyError if unknown."""
    return OPERATORS[FUNCTION_ALIASES.get(name, name)]


# --- the lowering table: one row per instruction a Program may hold -------------------------------------
#
# :mod:`lossforge.lowering` turns a sympy expression into a Program of instructions, one per node; each
# non-leaf instruction names a row here. sympy's sums, products and powers are n-ary (or carry an integer
# exponent), so they get rows of their own; every function head of the operator table gets one derived from
# its Operator. Each backend (lossforge.backends) only loops over a Program and calls these forms, so the
# torch closure, the numpy derivative kernel and the exported source cannot drift apart.


@dataclass(frozen=True)
class Instr:
    """How every backend computes one kind of instruction.

    ``torch(args, param)``: the value from the arguments' torch values (Python floats for folded numbers).
    ``numpy(args, param)``: ``(value, derivative along y_pred or None)`` from the arguments' pairs.
    ``source(args, param)``: Python source from the arguments' source texts.
    ``helper``: a function of this module whose source an export must carry (None for torch's own).
    ``param``: the sympy node's parameter (a power's exponent), or None.
    """

    name: str
    sympy_head: type
    torch: Callable[[Sequence[Any], Any], Any]
    numpy: Callable[[Sequence[Jvp], Any], Jvp]
    source: Callable[[Sequence[str], Any], str]
    helper: Callable | None = None
    param: Callable[[sympy.Expr], Any] | None = None


def _power_exponent(power: sympy.Pow) -> int:
    """A power's exponent: a positive integer, as canonicalisation makes them (x*x -> x**2)."""
    exponent = power.args[1]
    if not (exponent.is_Integer and int(exponent) > 0):
        raise ExpressionError(f"power {exponent} cannot come from the operator table")
    return int(exponent)


def _function_row(op: Operator) -> Instr:
    fn, jvp = op.torch_form, op.numpy_jvp
    local = fn.__module__ == __name__  # our protected forms are copied into exports; torch's are called
    name = fn.__name__ if local else "torch." + fn.__name__
    if op.arity == 1:
        numpy_form = lambda args, _: jvp(*args[0])  # noqa: E731
    else:
        numpy_form = lambda args, _: jvp(args[0][0], args[1][0], args[0][1], args[1][1])  # noqa: E731
    return Instr(
        op.name, op.sympy_head,
        torch=lambda args, _: fn(*args),
        numpy=numpy_form,
        source=lambda args, _: f"{name}({', '.join(args)})",
        helper=fn if local else None,
    )


INSTRUCTIONS: dict[str, Instr] = {
    row.name: row
    for row in [
        # sympy puts numbers first in sums and products, so the left fold starts from them as Python does
        Instr("sum", sympy.Add, torch=lambda args, _: reduce(_pyop.add, args),
              numpy=lambda args, _: numpy_sum(args), source=lambda args, _: "(" + " + ".join(args) + ")"),
        Instr("product", sympy.Mul, torch=lambda args, _: reduce(_pyop.mul, args),
              numpy=lambda args, _: numpy_product(args), source=lambda args, _: "(" + " * ".join(args) + ")"),
        Instr("power", sympy.Pow, torch=lambda args, n: args[0] ** n,
              numpy=lambda args, n: numpy_power(args[0], n), source=lambda args, n: f"({args[0]} ** {n})",
              param=_power_exponent),
        *(_function_row(op) for op in OPERATORS.values() if op.numpy_jvp is not None),
    ]
}

#: sympy head -> instruction row (what the lowering looks up for every non-leaf node).
INSTRUCTION_BY_HEAD: dict[type, Instr] = {row.sympy_head: row for row in INSTRUCTIONS.values()}
