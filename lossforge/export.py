"""Export discovered losses (py, json, latex, sympy) and load them back safely.

* **json**: ``{"format": "lossforge-loss", "version": 1, "tokens": [...], "formula", "latex", "metadata"}``.
  ``tokens`` is the prefix expression over the operator table (operator names, ``y_pred``, ``y_real`` and
  float constants); it alone defines the loss, the other fields are for people.
* **py**: a standalone module that needs only torch: the protected operators (their source is copied from
  :mod:`lossforge.operators`, so the numerics are the ones the search used) and an ``nn.Module`` class
  named after the loss following the :class:`~lossforge.loss.SymbolicLoss` conventions.
* **latex**, **sympy**: the formula as LaTeX (guards shown), or as ``sympy.srepr`` text of plain sympy
  (Piecewise/Max/Min/Abs with the protected operators' values, see :mod:`lossforge.backends.sympy_plain`).

:func:`load` never executes anything from the file: JSON is parsed with ``json`` and its tokens are
validated against the operator table and size limits; run files are read through SQL queries.
"""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path
from typing import Any

import sympy

from lossforge import operators
from lossforge.backends.python_source import python_source
from lossforge.backends.sympy_plain import plain_sympy
from lossforge.errors import ExportError, ExpressionError, LossforgeError
from lossforge.expression import LossExpression
from lossforge.loss import SymbolicLoss, class_probabilities

FORMATS = ("py", "json", "latex", "sympy")
JSON_FORMAT = "lossforge-loss"
JSON_VERSION = 1
MAX_JSON_BYTES = 1_000_000


def to_json(expression: LossExpression, metadata: dict[str, Any] | None = None) -> str:
    """The JSON export document."""
    doc = {
        "format": JSON_FORMAT,
        "version": JSON_VERSION,
        "tokens": expression.to_json(),
        "formula": expression.formula(),
        "latex": expression.latex(),
        "metadata": metadata or {},
    }
    return json.dumps(doc, indent=2) + "\n"


def class_name(expression: LossExpression, name: str | None = None) -> str:
    """A valid class name: ``name`` made an identifier, or ``EvolvedLoss`` plus the loss key."""
    if name:
        ident = re.sub(r"\W+", "_", name).strip("_")
        return ident[0].upper() + ident[1:] if ident and not ident[0].isdigit() else f"Loss_{ident}"
    return f"EvolvedLoss_{expression.key[:8]}"


def to_python(expression: LossExpression, metadata: dict[str, Any] | None = None, name: str | None = None) -> str:
    """A standalone torch module defining the loss as an ``nn.Module``."""
    used: dict[str, Any] = {}
    body = python_source(expression.sympy, used)
    # classification reads log(y_pred) from log_softmax(logits), as the search scored it (exact cross-entropy)
    exact_body = python_source(expression.sympy, used, log_probabilities=True)
    helpers = [inspect.getsource(fn) for n, fn in sorted(used.items())]
    helpers.append(inspect.getsource(class_probabilities))  # the classification convention, verbatim
    eps = {k: getattr(operators, k) for k in ("DIV_EPS", "SQRT_EPS", "LOG_EPS", "EXP_MAX")}
    meta_lines = "\n".join(f"    {k}: {v}" for k, v in (metadata or {}).items())
    cls = class_name(expression, name)
    return f'''r"""Loss exported by lossforge (needs only torch).

Formula:  {expression.formula()}
LaTeX:    {expression.latex()}
Prefix:   {expression.prefix()}
{("Provenance:" + chr(10) + meta_lines) if meta_lines else ""}
"""

from typing import Optional

import torch
from torch import nn

{chr(10).join(f"{k} = {v!r}" for k, v in eps.items())}


{(chr(10) + chr(10)).join(helpers)}

class {cls}(nn.Module):
    r"""L(y_pred, y_real) = {expression.formula()}

    LaTeX: {expression.latex()}

    Regression: input and target of the same shape, loss applied elementwise. Classification (integer
    class targets, or problem="classification" for soft targets): y_pred = softmax(input, dim=1), y_real =
    one-hot target, per-sample loss summed over classes. reduction: "mean" | "sum" | "none".
    """

    def __init__(self, reduction: str = "mean", problem: str = "auto") -> None:
        super().__init__()
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', not {{reduction!r}}")
        self.reduction = reduction
        self.problem = problem

    @staticmethod
    def elementwise(y_pred: torch.Tensor, y_real: torch.Tensor,
                    log_y_pred: Optional[torch.Tensor] = None) -> torch.Tensor:
        if log_y_pred is None:
            out = {body}
        else:  # log_y_pred = log_softmax(logits): log(y_pred) stays exact below the protected log's clamp
            out = {exact_body}
        return out + torch.zeros_like(y_pred)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        classification = self.problem == "classification" or (
            self.problem == "auto" and not target.is_floating_point() and input.dim() == target.dim() + 1
        )
        if classification:
            y_pred, y_real = class_probabilities(input, target)
            per_sample = self.elementwise(y_pred, y_real, torch.log_softmax(input, dim=1)).sum(dim=1)
        else:
            if input.shape != target.shape:
                raise ValueError(f"input {{tuple(input.shape)}} and target {{tuple(target.shape)}} must match")
            per_sample = self.elementwise(input, target.to(input.dtype))
        if self.reduction == "mean":
            return per_sample.mean()
        if self.reduction == "sum":
            return per_sample.sum()
        return per_sample
'''


def render(expression: LossExpression, fmt: str, metadata: dict[str, Any] | None = None,
           name: str | None = None) -> str:
    """The export of ``expression`` in format ``fmt`` (py, json, latex, sympy)."""
    if fmt == "json":
        return to_json(expression, metadata)
    if fmt == "py":
        return to_python(expression, metadata, name)
    if fmt == "latex":
        return expression.latex() + "\n"
    if fmt == "sympy":
        return sympy.srepr(plain_sympy(expression.sympy)) + "\n"
    raise ExportError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


def read_json_export(path: str | Path) -> tuple[LossExpression, dict[str, Any]]:
    """Parse and validate a JSON export; ExportError on anything hostile or malformed."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ExportError(f"cannot read {path}: {exc.strerror}") from None
    if size > MAX_JSON_BYTES:
        raise ExportError(f"{path}: {size} bytes exceeds the {MAX_JSON_BYTES}-byte limit of a loss export")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ExportError(f"{path}: not a JSON loss export ({type(exc).__name__})") from None
    if not isinstance(doc, dict) or doc.get("format") != JSON_FORMAT:
        raise ExportError(f"{path}: not a lossforge loss export (expected \"format\": \"{JSON_FORMAT}\")")
    if doc.get("version") != JSON_VERSION:
        raise ExportError(f"{path}: export version {doc.get('version')!r} is not supported (this lossforge "
                          f"reads version {JSON_VERSION})")
    try:
        expression = LossExpression(doc.get("tokens"), where=str(path))
    except ExpressionError as exc:
        raise ExportError(str(exc)) from None
    metadata = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    return expression, metadata


def load(path: str | Path, rank: int = 1, reduction: str = "mean", problem: str = "auto",
         pick: str = "best") -> SymbolicLoss:
    """A torch loss module from a JSON export or a run file (its ``rank``-th loss in the final ranking,
    see :mod:`lossforge.ranking`)."""
    path = Path(path)
    if not path.exists():
        raise ExportError(f"no such file: {path}")
    with open(path, "rb") as fh:
        head = fh.read(16)
    if head.startswith(b"SQLite format 3") or path.suffix in (".db", ".sqlite", ".sqlite3"):
        expression = expression_from_run(path, rank, pick)
    else:
        expression, _ = read_json_export(path)
    return SymbolicLoss(expression, reduction=reduction, problem=problem)  # type: ignore[arg-type]


def ranked_from_run(run_path: str | Path, rank: int = 1, pick: str = "best"):
    """The ``rank``-th entry of a run's final ranking (1 = the pick), with its expression validated like any
    external input: ``(Ranked, LossExpression)``."""
    from lossforge.ranking import ranking
    from lossforge.runfile import RunStore

    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ExportError(f"rank must be a positive integer, got {rank!r}")
    with RunStore.open(run_path, readonly=True) as store:
        ranked = ranking(store, rank, pick)
    if len(ranked) < rank:
        raise ExportError(f"{run_path}: rank {rank} requested but the run has {len(ranked)} scored loss(es)")
    try:
        return ranked[rank - 1], LossExpression(ranked[rank - 1].record.tree, where=f"{run_path} rank {rank}")
    except LossforgeError as exc:
        raise ExportError(str(exc)) from None


def expression_from_run(run_path: str | Path, rank: int = 1, pick: str = "best") -> LossExpression:
    """The ``rank``-th loss of a run's final ranking (1 = the pick), validated like any external input."""
    return ranked_from_run(run_path, rank, pick)[1]
