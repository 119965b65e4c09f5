"""sympy -> Program: the one lowering every backend runs.

A :class:`Program` is the loss as a straight list of instructions in evaluation order (each argument an
earlier slot, the result the last slot) plus one constant index: the expression's float constants in the
order the instructions use them. Every backend (:mod:`lossforge.backends`: the torch closure, the numpy
value-and-derivative kernel, the Python source of an export) is a loop over the same Program, so "same
constants, same order" holds by construction, not because two tree walks happen to visit ``args`` alike.

Leaves are the inputs (``y_pred``, ``y_real``, and in the classification variant ``log_y_pred``, the
log-probability that a trainer computes as ``log_softmax`` of the logits), ``constant`` (an index into the
constant list: the tunable floats) and ``number`` (an integer or rational from canonicalisation, which is
structure, not a tunable constant). Every other instruction names a row of
:data:`lossforge.operators.INSTRUCTIONS`.

Lowering is cached by the exact sympy form (and on :class:`~lossforge.expression.LossExpression`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import sympy

from lossforge.errors import ExpressionError
from lossforge.operators import INSTRUCTION_BY_HEAD, MAX_CONSTANT, VARIABLES, ProtectedLog

#: Leaf instructions (no arguments); the backends bind them to their inputs.
LEAVES = ("y_pred", "y_real", "log_y_pred", "constant", "number")


@dataclass(frozen=True)
class Instruction:
    """One step: ``op`` (a leaf name or a row of the instruction table), argument slots, a parameter
    (a constant's index, a number's value, a power's exponent; None otherwise)."""

    op: str
    args: tuple[int, ...] = ()
    param: Any = None


@dataclass(frozen=True)
class Program:
    """A lowered loss: instructions in evaluation order (the last one is the result) and the constants."""

    instructions: tuple[Instruction, ...]
    constants: tuple[float, ...]

    @property
    def uses_log_probabilities(self) -> bool:
        """Whether a ``log(y_pred)`` was lowered to the log-probability leaf."""
        return any(ins.op == "log_y_pred" for ins in self.instructions)


def check_constants(expr: sympy.Expr, where: str = "expression") -> None:
    """ExpressionError if a constant of ``expr`` (as written or as sympy folded it) is non-finite or beyond
    ±MAX_CONSTANT: ``(1e6**8)**4`` folds to 1e192, which no loss should carry."""
    for number in expr.atoms(sympy.Number):
        value = float(number)
        if not math.isfinite(value) or abs(value) > MAX_CONSTANT:
            shown = "a non-finite number" if not math.isfinite(value) else f"{value:.4g}"
            raise ExpressionError(
                f"{where}: its constants fold to {shown}, outside [-{MAX_CONSTANT:g}, {MAX_CONSTANT:g}]; "
                "use smaller constants"
            )


def lower(expr: sympy.Expr, log_probabilities: bool = False) -> Program:
    """Lower a sympy loss over ``y_pred``/``y_real`` built from the operator table into a :class:`Program`.

    ``log_probabilities``: the classification variant: ``log(y_pred)`` reads the ``log_y_pred`` leaf,
    ``log(y_pred**k)`` becomes ``k*log_y_pred`` and ``log(c*y_pred**k)`` ``log(c) + k*log_y_pred``, so
    cross-entropy stays exact where the protected log would clamp a probability below its epsilon. The
    constants are the same, in the same order, in both variants (a rewritten node reads only its ``c``).
    """
    return _lower_cached(sympy.srepr(expr), expr, bool(log_probabilities))


@lru_cache(maxsize=8192)
def _lower_cached(_srepr: str, expr: sympy.Expr, log_probabilities: bool) -> Program:
    check_constants(expr)
    instructions: list[Instruction] = []
    constants: list[float] = []
    leaves: dict[str, int] = {}

    def emit(op: str, args: tuple[int, ...] = (), param: Any = None) -> int:
        instructions.append(Instruction(op, args, param))
        return len(instructions) - 1

    def leaf(name: str) -> int:
        if name not in leaves:  # one slot per input, however often it is read
            leaves[name] = emit(name)
        return leaves[name]

    def power_of_pred(e: sympy.Expr) -> int | None:
        """``y_pred`` -> 1, ``y_pred**k`` -> k (a positive integer), anything else -> None."""
        if e.is_Symbol and e.name == "y_pred":
            return 1
        if e.is_Pow and e.base.is_Symbol and e.base.name == "y_pred" and e.exp.is_Integer and int(e.exp) > 0:
            return int(e.exp)
        return None

    def log_probability(arg: sympy.Expr) -> int | None:
        """The slot of ``log(arg)`` from the log-probability leaf for ``arg`` = ``[c*]y_pred**k``, else None.
        ``log(c*y_pred)`` is ``log(c) + log(y_pred)``: without it ``log(1.0*y_pred)`` (cross-entropy's key)
        or ``log(2*y_pred)`` clamped where cross-entropy is exact."""
        scale = None
        if arg.is_Mul and len(arg.args) == 2 and arg.args[0].is_Number:
            scale, arg = arg.args
        k = power_of_pred(arg)
        if k is None:
            return None
        term = leaf("log_y_pred")
        if k != 1:
            term = emit("product", (emit("number", param=float(k)), term))
        if scale is None:
            return term
        if scale.is_Float:  # a tunable constant: log|c| computed from its slot (same constants, same order)
            zero = emit("product", (emit("number", param=0.0), leaf("log_y_pred")))  # a tensor of the input's dtype
            log_scale = emit("log", (emit("sum", (zero, visit(scale))),))
        else:
            log_scale = emit("number", param=math.log(abs(float(scale))))
        return emit("sum", (log_scale, term))

    def visit(e: sympy.Expr) -> int:
        if e.is_Symbol:
            if e.name not in VARIABLES:
                raise ExpressionError(f"unknown symbol {e.name!r} in expression")
            return leaf(e.name)
        if e.is_Float:
            constants.append(float(e))
            return emit("constant", param=len(constants) - 1)
        if e.is_Number:
            return emit("number", param=float(e))
        if log_probabilities and isinstance(e, ProtectedLog):
            exact = log_probability(e.args[0])
            if exact is not None:
                return exact
        row = INSTRUCTION_BY_HEAD.get(type(e))
        if row is None:
            raise ExpressionError(f"no lowering for {type(e).__name__}; add it to the operator table")
        param = row.param(e) if row.param is not None else None
        operands = e.args[:1] if row.name == "power" else e.args  # the exponent is the parameter
        return emit(row.name, tuple(visit(a) for a in operands), param)

    visit(expr)
    return Program(tuple(instructions), tuple(constants))
