"""Program -> torch: one closure that runs the Program's instructions over tensors.

No ``eval``/``exec``, nothing generated as source. Float constants are read from a ``constants`` tensor, so
they can be registered as buffers or trainable parameters. Compiled functions are cached by the exact
sympy form, so a candidate seen again costs nothing.

The classification variant (:attr:`CompiledExpression.log_fn`) also takes the log-probabilities
(``log_softmax`` of the logits) and reads ``log(y_pred)`` from them: exact cross-entropy at any logit gap.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Optional

import sympy
import torch

from lossforge.lowering import Program, lower
from lossforge.operators import INSTRUCTIONS

Node = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class CompiledExpression:
    """A compiled loss: ``fn(y_pred, y_real, constants) -> elementwise loss`` and its initial constants.

    ``log_fn(y_pred, y_real, constants, log_y_pred)`` is the classification variant, or None when the
    expression takes no ``log(y_pred)`` (then ``fn`` already is exact).
    """

    fn: Node
    constants: tuple[float, ...]
    log_fn: Optional[Node] = None

    @property
    def uses_log_probabilities(self) -> bool:
        """Whether passing ``log_y_pred`` changes how the loss is computed."""
        return self.log_fn is not None

    def __call__(self, y_pred: torch.Tensor, y_real: torch.Tensor, constants: torch.Tensor | None = None,
                 log_y_pred: torch.Tensor | None = None):
        if constants is None:
            constants = torch.tensor(self.constants, dtype=y_pred.dtype, device=y_pred.device)
        if log_y_pred is not None and self.log_fn is not None:
            out = self.log_fn(y_pred, y_real, constants, log_y_pred)
        else:
            out = self.fn(y_pred, y_real, constants)
        if not isinstance(out, torch.Tensor) or out.dim() == 0:
            # a loss that folds to a number still gives one value per element (and fails the gradient checks)
            out = out + torch.zeros_like(y_pred)
        return out


_INPUT, _CONSTANT, _NUMBER, _ROW = range(4)


def closure(program: Program) -> Node:
    """``fn(y_pred, y_real, constants, log_y_pred=None)`` running ``program`` over torch values."""
    steps = []
    for ins in program.instructions:
        if ins.op in ("y_pred", "y_real", "log_y_pred"):
            steps.append((_INPUT, ("y_pred", "y_real", "log_y_pred").index(ins.op), ()))
        elif ins.op == "constant":
            steps.append((_CONSTANT, ins.param, ()))
        elif ins.op == "number":
            steps.append((_NUMBER, ins.param, ()))  # a Python float, as torch takes it in + and *
        else:
            steps.append((_ROW, (INSTRUCTIONS[ins.op].torch, ins.param), ins.args))
    steps = tuple(steps)

    def run(p, r, c, lp=None):
        inputs = (p, r, lp)
        slots: list = []
        for kind, value, args in steps:
            if kind == _ROW:
                form, param = value
                slots.append(form([slots[i] for i in args], param))
            elif kind == _INPUT:
                slots.append(inputs[value])
            elif kind == _CONSTANT:
                slots.append(c[value])
            else:
                slots.append(value)
        return slots[-1]

    return run


def compile_expr(expr: sympy.Expr) -> CompiledExpression:
    """Compile a sympy expression over ``y_pred``/``y_real`` built from the table's operators."""
    return _compile_cached(sympy.srepr(expr), expr)


@lru_cache(maxsize=4096)
def _compile_cached(_srepr: str, expr: sympy.Expr) -> CompiledExpression:
    program = lower(expr)
    exact = lower(expr, log_probabilities=True)
    assert exact.constants == program.constants  # the rewritten log nodes hold no constants
    log_fn = closure(exact) if exact.uses_log_probabilities else None
    return CompiledExpression(closure(program), program.constants, log_fn)
