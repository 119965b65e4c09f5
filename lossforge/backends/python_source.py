"""Program -> Python source over torch (the ``.py`` export's loss body).

The text comes only from the instruction table's source forms, the input names and ``repr`` of the
constants (floats), so nothing from a file or a user string reaches the generated code. The constants are
baked in as literals in the Program's order. ``log_probabilities=True`` emits the classification variant,
which reads ``log(y_pred)`` from a ``log_y_pred`` argument (``log_softmax`` of the logits), as the search did.
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
    for ins in program.instructions:
        if ins.op in INPUT_NAMES:
            texts.append(INPUT_NAMES[ins.op])
        elif ins.op == "constant":
            texts.append(repr(float(program.constants[ins.param])))
        elif ins.op == "number":
            texts.append(repr(float(ins.param)))
        else:
            row = INSTRUCTIONS[ins.op]
            if row.helper is not None and helpers is not None:
                helpers[row.helper.__name__] = row.helper
            texts.append(row.source([texts[i] for i in ins.args], ins.param))
    return texts[-1]


def python_source(expr: sympy.Expr, helpers: dict[str, Callable] | None = None,
                  log_probabilities: bool = False) -> str:
    """Python source of a sympy loss (see :func:`program_source`)."""
    return program_source(lower(expr, log_probabilities), helpers)
