"""Export discovered losses (py, json, latex, sympy) and load them back safely.

* **json**: ``{"format": "lossforge-loss", "version": 1, "tokens": [...], "formula", "latex", "metadata"}``.
  ``tokens`` is the prefix expression over the operator table (operator names, ``y_pred``, ``y_real`` and
  float constants); it alone defines the loss, the other fields are for people.
* **py**: a standalone module that needs only torch: the protected operators (their source is copied from
  :mod:`lossforge.operators`, so the numerics are the ones the search used), the classification convention
  (copied from :mod:`lossforge.loss`) and an ``nn.Module`` class named after the loss following the
  :class:`~lossforge.loss.SymbolicLoss` conventions (``weight``, ``ignore_index``, ``label_smoothing``). It
  compiles with ``torch.jit.script`` and ``torch.compile``. Text from the run (formula, run path, suite
  name, any metadata) enters it only as ``repr`` string literals, and a class name only as an ASCII
  identifier, so no file or name can put code into it.
* **latex**, **sympy**: the formula as LaTeX (guards shown), or as ``sympy.srepr`` text of plain sympy
  (sign/Max/Min/Abs with the protected operators' values, see :mod:`lossforge.backends.sympy_plain`).

:func:`load` never executes anything from the file: JSON is read with a bounded read (regular files only,
at most ``MAX_JSON_BYTES`` bytes actually read), parsed with ``json`` and its tokens are validated against
the operator table and size limits; run files are read through SQL queries. Files are written by
:mod:`lossforge.atomic`.
"""

from __future__ import annotations

import ast
import builtins
import inspect
import json
import keyword
import os
import re
import stat
from pathlib import Path
from typing import Any

import sympy

from lossforge import operators
from lossforge import atomic
from lossforge.backends.python_source import python_source
from lossforge.backends.sympy_plain import plain_sympy
from lossforge.errors import ExportError, ExpressionError, LossforgeError
from lossforge.expression import LossExpression
from lossforge.loss import (
    SymbolicLoss, check_options, check_regression, class_targets, classification_loss, is_classification_problem,
    loss_precision, reduce_loss,
)
from lossforge.operators import OPERATORS
from lossforge.strict_json import finite

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
        "metadata": finite(metadata or {}),
    }
    return json.dumps(doc, indent=2, allow_nan=False) + "\n"


def class_name(expression: LossExpression, name: str | None = None) -> str:
    """The class name of the py export: ``name`` exactly as given, or ``EvolvedLoss`` plus the loss key.
    A name that is no ASCII identifier, a keyword, or a builtin or a name the module defines itself
    (``ValueError``, which the module raises; ``torch``) is refused with ExportError naming a usable form:
    it was rewritten before (``robust_loss`` became ``Robust_loss``), so the user's import failed later."""
    if name is None:
        return f"EvolvedLoss_{expression.key[:8]}"
    if not isinstance(name, str):
        raise ExportError(f"class name must be a string, got {type(name).__name__}")
    if not (name.isascii() and name.isidentifier()) or len(name) > 64:
        ident = re.sub(r"[^0-9A-Za-z_]+", "_", name).strip("_")[:64]
        suggestion = ident if ident and not ident[0].isdigit() else f"Loss_{ident}".rstrip("_")
        raise ExportError(f"class name {name!r} is not a Python identifier (ASCII letters, digits and _, not "
                          f"starting with a digit, at most 64 characters); use e.g. {_safe(suggestion)!r}")
    clash = _clash(name)
    if clash:
        raise ExportError(f"class name {name!r} is {clash}; use another, e.g. "
                          f"{_safe(name[0].upper() + name[1:] + 'Loss')!r}")
    return name


def _clash(ident: str) -> str | None:
    """Why identifier ``ident`` cannot name the exported class, or None."""
    if keyword.iskeyword(ident):
        return "a Python keyword"
    if ident in _RESERVED_NAMES:
        return "a name the exported module defines"
    return "a Python builtin, which the module may call" if hasattr(builtins, ident) else None


def _safe(ident: str) -> str:
    """``ident`` made a name :func:`class_name` accepts (for its suggestions)."""
    return ident + "_" if _clash(ident) else ident


#: The classification convention and the option checks, copied verbatim from :mod:`lossforge.loss` into
#: every module.
_CONVENTION = (check_options, check_regression, loss_precision, is_classification_problem, class_targets,
               reduce_loss, classification_loss)
#: Names a generated module defines itself; a class must not shadow them.
_RESERVED_NAMES = frozenset({"torch", "nn", "numbers", "List", "Optional", "DIV_EPS", "SQRT_EPS", "LOG_EPS", "EXP_MAX"}
                            | {fn.__name__ for fn in _CONVENTION}
                            | {op.torch_form.__name__ for op in OPERATORS.values()})


def _inline_constants(source: str, values: dict[str, float]) -> str:
    """``source`` (an operator's torch form) with the named module constants replaced by their values:
    torch.jit.script cannot read float globals. Done on the syntax tree, so only those names change."""

    class Inline(ast.NodeTransformer):
        def visit_Name(self, node: ast.Name) -> ast.AST:
            if isinstance(node.ctx, ast.Load) and node.id in values:
                return ast.copy_location(ast.Constant(values[node.id]), node)
            return node

    return ast.unparse(Inline().visit(ast.parse(source))) + "\n"


def _docstring(lines: list[str]) -> str:
    """A string literal holding ``lines``: ``repr`` of the text, so nothing in it can end the literal."""
    return repr("\n".join(lines) + "\n")


def to_python(expression: LossExpression, metadata: dict[str, Any] | None = None, name: str | None = None) -> str:
    """A standalone torch module defining the loss as an ``nn.Module``.

    Data (formula, metadata such as the run path or the suite name, the class name) enter the generated
    code only as ``repr`` string literals or a sanitised identifier, so no text can become code; the
    module works with ``torch.jit.script`` and ``torch.compile``."""
    used: dict[str, Any] = {}
    body = python_source(expression.sympy, used)
    # classification reads log(y_pred) from log_softmax(logits), as the search scored it (exact cross-entropy)
    exact_body = python_source(expression.sympy, used, log_probabilities=True)
    eps = {k: float(getattr(operators, k)) for k in ("DIV_EPS", "SQRT_EPS", "LOG_EPS", "EXP_MAX")}
    helpers = [_inline_constants(inspect.getsource(fn), eps) for n, fn in sorted(used.items())
               if not n.startswith("torch.")]
    helpers += [inspect.getsource(fn) for fn in _CONVENTION]  # the classification convention, verbatim
    module_doc = ["Loss exported by lossforge (needs only torch).", "",
                  f"Formula:  {expression.formula()}", f"LaTeX:    {expression.latex()}",
                  f"Prefix:   {expression.prefix()}"]
    if metadata:
        module_doc += ["Provenance:"] + [f"    {k}: {v}" for k, v in metadata.items()]
    class_doc = [
        f"L(y_pred, y_real) = {expression.formula()}", "",
        f"LaTeX: {expression.latex()}", "",
        "Regression: input and target of the same shape, loss applied elementwise. Classification (class",
        "index targets, or problem=\"classification\" for soft targets): y_pred = softmax(input, dim=1),",
        "y_real = one-hot target, per-sample loss summed over classes. weight, ignore_index and",
        "label_smoothing as in nn.CrossEntropyLoss. reduction: \"mean\" | \"sum\" | \"none\".",
    ]
    cls = class_name(expression, name)
    return f'''{_docstring(module_doc)}

import numbers
from typing import List, Optional

import torch
from torch import nn

{chr(10).join(f"{k} = {float(v)!r}" for k, v in eps.items())}


{(chr(10) + chr(10)).join(helpers)}

class {cls}(nn.Module):
    {_docstring(class_doc)}

    def __init__(self, reduction: str = "mean", problem: str = "auto", weight: Optional[torch.Tensor] = None,
                 ignore_index: int = -100, label_smoothing: float = 0.0) -> None:
        super().__init__()
        check_options(reduction, problem, weight, label_smoothing, ignore_index)
        self.reduction = reduction
        self.problem = problem
        self.ignore_index = int(ignore_index)
        self.label_smoothing = float(label_smoothing)
        self.register_buffer("weight", weight)

    @staticmethod
    def elementwise(y_pred: torch.Tensor, y_real: torch.Tensor,
                    log_y_pred: Optional[torch.Tensor] = None) -> torch.Tensor:
        y_pred, y_real = loss_precision(y_pred), loss_precision(y_real)  # float32 for half precision
        if log_y_pred is not None:
            log_y_pred = loss_precision(log_y_pred)
        if log_y_pred is None:
            out = {body}
        else:  # log_y_pred = log_softmax(logits): log(y_pred) stays exact below the protected log's clamp
            out = {exact_body}
        # "- zeros", not "+ zeros": x - 0.0 is x for every x, so a -0.0 stays -0.0 as in SymbolicLoss
        return out - torch.zeros_like(y_pred)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if is_classification_problem(self.problem, input, target):
            one = input.dim() == 1 and (target.dim() == 0 or target.shape == input.shape)
            if one:  # one sample's logits [C], as torch's losses take it: a batch of one
                input, target = input.unsqueeze(0), target.unsqueeze(0)
            input = loss_precision(input)  # softmax in float32 for half precision, as autocast
            y_pred = torch.softmax(input, dim=1)
            y_real = class_targets(input, target, self.ignore_index, self.label_smoothing)
            terms = self.elementwise(y_pred, y_real, torch.log_softmax(input, dim=1))
            loss = classification_loss(terms, target, self.weight, self.ignore_index, self.reduction)
            return loss.squeeze(0) if one and self.reduction == "none" else loss
        check_regression(input, target, self.weight, self.label_smoothing)
        return reduce_loss(self.elementwise(input, target.to(input.dtype)), self.reduction)
'''


def render(expression: LossExpression, fmt: str, metadata: dict[str, Any] | None = None,
           name: str | None = None) -> str:
    """The export of ``expression`` in format ``fmt`` (py, json, latex, sympy); ``name`` is the py export's
    class name (refused for the other formats, which have none: it was silently dropped)."""
    if name is not None and fmt != "py":
        raise ExportError(f"a class name (--name) is only for the py export; the {fmt} export has no class: "
                          "leave the name out or export with --format py")
    if fmt == "json":
        return to_json(expression, metadata)
    if fmt == "py":
        return to_python(expression, metadata, name)
    if fmt == "latex":
        return expression.latex() + "\n"
    if fmt == "sympy":
        return sympy.srepr(plain_sympy(expression.sympy)) + "\n"
    raise ExportError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


#: Digits an integer in a JSON export may have (Python refuses to parse ints over 4,300 digits with a
#: ValueError; no token needs more than a few).
MAX_INT_DIGITS = 30


def read_bounded(path: str | Path, limit: int = MAX_JSON_BYTES) -> bytes:
    """The bytes of the regular file at ``path``, at most ``limit`` of them (:func:`lossforge.atomic.read_bounded`),
    or ExportError."""
    path = Path(path)
    try:
        return atomic.read_bounded(path, limit)
    except FileNotFoundError:
        raise ExportError(f"no such file: {path}") from None
    except atomic.NotRegularFile as exc:
        raise ExportError(f"{path} is {exc.kind}, not a loss export file") from None
    except atomic.FileTooLarge:
        raise ExportError(f"{path}: more than {limit} bytes exceeds the {limit}-byte limit of a loss export") from None
    except OSError as exc:
        raise ExportError(f"cannot read {path}: {exc.strerror or exc}") from None


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ExportError(f"an integer of {len(text)} digits; a loss export holds numbers of at most "
                          f"{MAX_INT_DIGITS} digits")
    return int(text)


def read_json_export(path: str | Path) -> tuple[LossExpression, dict[str, Any]]:
    """Parse and validate a JSON export; ExportError on anything hostile or malformed."""
    path = Path(path)
    data = read_bounded(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ExportError(f"{path}: not UTF-8 text (invalid byte at offset {exc.start}); a loss export is "
                          "UTF-8 JSON") from None
    try:
        doc = json.loads(text, parse_int=_parse_int)
    except ExportError as exc:
        raise ExportError(f"{path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ExportError(f"{path}: not a JSON loss export (invalid JSON at line {exc.lineno} column "
                          f"{exc.colno}: {exc.msg})") from None
    except RecursionError:
        raise ExportError(f"{path}: not a JSON loss export (nested too deeply)") from None
    except ValueError as exc:  # e.g. a number json cannot convert
        raise ExportError(f"{path}: not a JSON loss export ({str(exc).splitlines()[0][:80]})") from None
    if not isinstance(doc, dict) or doc.get("format") != JSON_FORMAT:
        raise ExportError(f"{path}: not a lossforge loss export (expected \"format\": \"{JSON_FORMAT}\")")
    version = doc.get("version")
    if type(version) is not int or version != JSON_VERSION:
        shown = repr(version) if isinstance(version, (int, float, str, type(None))) else type(version).__name__
        raise ExportError(f"{path}: export version {shown[:40]} is not supported (this lossforge reads version "
                          f"{JSON_VERSION})")
    if "tokens" not in doc:
        raise ExportError(f"{path}: the export has no \"tokens\" list (the prefix expression that defines the "
                          "loss); re-export it with `lossforge export RUN --format json`")
    if not isinstance(doc["tokens"], list):
        raise ExportError(f"{path}: expected a non-empty list of prefix tokens under \"tokens\"")
    try:
        expression = LossExpression(doc["tokens"], where=str(path))
    except ExpressionError as exc:
        raise ExportError(str(exc)) from None
    metadata = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    return expression, metadata


def _is_run_file(path: Path) -> bool:
    """Whether ``path`` names a run file (a run-file suffix or an SQLite header); never blocks on a FIFO."""
    if path.suffix in (".db", ".sqlite", ".sqlite3"):
        return True
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return False
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode) and os.read(fd, 16).startswith(b"SQLite format 3")
    except OSError:
        return False
    finally:
        os.close(fd)


def load(path: str | Path, rank: int = 1, reduction: str = "mean", problem: str = "auto",
         pick: str = "best", **options: Any) -> SymbolicLoss:
    """A torch loss module from a JSON export or a run file (its ``rank``-th loss in the final ranking,
    see :mod:`lossforge.ranking`; a JSON export holds one loss: ``rank`` or ``pick`` other than the defaults
    is an error there). ``options``: SymbolicLoss's ``weight``, ``ignore_index``,
    ``label_smoothing``, ``trainable_constants``."""
    if not isinstance(path, (str, os.PathLike)):
        raise ExportError(f"load takes the path of a JSON export or a run file, got {type(path).__name__}")
    path = Path(path)
    if not path.exists():
        raise ExportError(f"no such file: {path}")
    if _is_run_file(path):
        expression = expression_from_run(path, rank, pick)
    elif path.suffix.lower() == ".py":  # was "not a JSON loss export (invalid JSON at line 1 ...)"
        raise ExportError(f"{path}: a .py export is imported, not loaded (`from {path.stem} import ...`; no file's "
                          "code is run here); load takes the .json export or the run file")
    else:
        if rank != 1 or pick != "best":  # else the file's one loss would stand for the rank asked for
            raise ExportError(f"{path}: a JSON export holds one loss, so rank and pick apply to run files only; "
                              "export that rank with `lossforge export RUN --rank K --format json`")
        expression, _ = read_json_export(path)
    return SymbolicLoss(expression, reduction=reduction, problem=problem, **options)  # type: ignore[arg-type]


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
