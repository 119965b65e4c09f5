"""Program -> Python source over torch (the ``.py`` export's loss body).

The text comes only from the instruction table's source forms, the input names and ``repr`` of the
constants (floats), so nothing from a file or a user string reaches the generated code. The constants are
baked in as literals in the Program's order (a division's constant numerator as
``torch.full_like(y_pred, c)``, so it keeps the input's dtype and ``torch.jit.script`` takes it).
``log_probabilities=True`` emits the classification variant, which reads ``log(y_pred)`` from a
``log_y_pred`` argument (``log_softmax`` of the logits), as the search did.
"""

from __future__ import annotations

from typing import Callable

import sympy

from lossforge.lowering import Program, lower
from lossforge.operators import INSTRUCTIONS

#: The names the generated code reads its inputs by.
INPUT_NAMES = {"y_pred": "y_pred", "y_real": "y_real", "log_y_pred": "log_y_pred"}


def program_source(program: Program, helpers: dict[str, Callable] | None = None) -> str:
    """One Python expression computing ``program``; the protected helpers it calls are added to ``helpers``
    (name -> function, whose source an export copies)."""
    texts: list[str] = []
    literal: set[int] = set()  # slots that are a Python float in the source
    for slot, ins in enumerate(program.instructions):
        if ins.op in INPUT_NAMES:
            texts.append(INPUT_NAMES[ins.op])
        elif ins.op == "constant":
            texts.append(repr(float(program.constants[ins.param])))
            literal.add(slot)
        elif ins.op == "number":
            texts.append(repr(float(ins.param)))
            literal.add(slot)
        else:
            row = INSTRUCTIONS[ins.op]
            args = [texts[i] for i in ins.args]
            if row.helper is not None:
                if helpers is not None:
                    helpers[row.helper.__name__] = row.helper
                args = _tensor_arguments(args, [i in literal for i in ins.args])
            texts.append(row.source(args, ins.param))
    return texts[-1]


def _tensor_arguments(args: list[str], is_literal: list[bool]) -> list[str]:
    """A helper's arguments with each number (sympy folds all but a division's numerator) as a tensor like
    ``y_pred``: ``torch.jit.script`` takes no float for a ``Tensor`` parameter, and the helper's
    ``torch.as_tensor`` would make it float32 (a float64 loss would compute with the constant rounded).
    ``y_pred``, not the other argument, so that no argument's text is repeated (nested divisions would
    double the source at each level); every input of the body has ``y_pred``'s shape and dtype."""
    if all(is_literal):
        return args
    return [f"torch.full_like({INPUT_NAMES['y_pred']}, {a})" if lit else a for a, lit in zip(args, is_literal)]


def python_source(expr: sympy.Expr, helpers: dict[str, Callable] | None = None,
                  log_probabilities: bool = False) -> str:
    """Python source of a sympy loss (see :func:`program_source`)."""
    return program_source(lower(expr, log_probabilities), helpers)
