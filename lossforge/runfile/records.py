"""Plain records of a run file: candidate and run states, the dataclasses queries return, and the JSON codec.

The codec is the only way JSON enters or leaves a run file. Reading is bounded (size and nesting depth are
checked before ``json.loads`` runs), and every decoded value is checked for the shape its record promises,
so a hand-edited or hostile file gives one :class:`~lossforge.errors.RunError` naming the table, the row and
the column, never a ``RecursionError``/``TypeError`` further down.
"""

from __future__ import annotations

import enum
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from lossforge.errors import RunError

#: The fidelity of a result scored with the suite's full settings (all search seeds, full training).
FULL_FIDELITY = "full"
#: The fidelity label of a re-scoring on the suite's confirm seeds (whole trainings).
CONFIRM_FIDELITY = "confirm"
#: Longest stored JSON document read back (bytes); a run's largest, a candidate's task scores, is ~10 kB.
MAX_JSON_BYTES = 8 * 2**20
#: Deepest nesting of a stored JSON document read back (the engine writes at most 5 levels).
MAX_JSON_DEPTH = 32
#: Longest fidelity label.
MAX_FIDELITY_CHARS = 256

_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


class CandidateState(enum.Enum):
    """Life cycle of a candidate, like Optuna's trial states."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETE = "complete"
    REJECTED = "rejected"
    FAILED = "failed"

    def is_finished(self) -> bool:
        """True for the final states (complete, rejected, failed); finished results never change."""
        return self not in (CandidateState.PENDING, CandidateState.RUNNING)


class RunStatus(enum.Enum):
    """State of a whole run."""

    RUNNING = "running"
    FINISHED = "finished"
    INTERRUPTED = "interrupted"
    #: a callback asked the search to stop; resumable like an interrupted run
    STOPPED = "stopped"
    FAILED = "failed"


class ResultKind(enum.Enum):
    """What a row of ``results`` is the result of."""

    LOSS = "loss"              # a candidate loss (name = its canonical key); candidates reference these
    BASELINE = "baseline"      # a reference loss on the run's suite (name = baseline name)
    VALIDATION = "validation"  # a loss or ``baseline:NAME`` re-scored on other seeds: the validation seeds
    #                            (fidelity ``full``) or the confirm seeds (fidelity ``confirm``)


@dataclass(frozen=True)
class CandidateRecord:
    """One candidate with its result (status, reason, fitness, task scores come from ``results``)."""

    id: int
    generation: int
    tree: tuple[str | float, ...]
    status: CandidateState
    key: str | None
    structure_key: str | None
    formula: str | None
    latex: str | None
    complexity: int | None
    reason: str | None
    fitness: float | None
    task_scores: dict[str, Any]
    constants: tuple[float, ...]
    duration_s: float | None
    created_at: str
    worker: str | None
    fidelity: str | None
    origin: str | None


@dataclass(frozen=True)
class EvaluationRecord:
    """A loss's result: loss ``key`` scored on suite ``suite_hash`` at ``fidelity``."""

    suite_hash: str
    key: str
    fidelity: str
    status: CandidateState
    reason: str | None
    fitness: float | None
    task_scores: dict[str, Any]
    candidate_id: int | None  # the first candidate of this run that references it; None when only imported
    origin: str | None        # None when scored in this run, else the run file it was imported from
    created_at: str


@dataclass(frozen=True)
class GenerationRecord:
    """The population at the end of generation ``gen``: enough to continue the run exactly."""

    gen: int
    population: list[Any]
    stats: dict[str, Any]
    finished_at: str


@dataclass(frozen=True)
class RunSummary:
    """What ``lossforge runs`` shows about one run file."""

    path: Path
    name: str
    status: RunStatus
    generations: int
    last_generation: int | None
    candidates: int
    best_fitness: float | None
    elapsed_s: float
    started_at: str
    updated_at: str
    lossforge_version: str | None


@dataclass(frozen=True)
class LeaseRecord:
    """The process that holds a run for writing, and when it last showed it is alive."""

    host: str
    pid: int
    process_start: str   # the holder's start time (tells a reused pid from the holder)
    token: str
    acquired_at: float   # Unix time
    heartbeat_at: float  # Unix time

    def describe(self, now: float) -> str:
        """``host H pid P (heartbeat N s ago)`` for error lines."""
        return f"host {self.host} pid {self.pid} (heartbeat {max(0.0, now - self.heartbeat_at):.0f} s ago)"


# ------------------------------------------------------------------------------------------------ codec
def dumps(value: Any, what: str) -> str:
    """Encode plain JSON data; ValueError naming ``what`` otherwise."""
    try:
        return json.dumps(value, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValueError(f"{what} must be plain JSON data (dict, list, str, number, bool, None): {exc}") from None


def loads(text: Any, where: str) -> Any:
    """Decode a stored JSON column within :data:`MAX_JSON_BYTES` and :data:`MAX_JSON_DEPTH`; RunError else."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise RunError(f"{where} is not UTF-8 text") from None
    if not isinstance(text, str):
        raise RunError(f"{where} is not JSON text (found {type(text).__name__})")
    if len(text) > MAX_JSON_BYTES:
        raise RunError(f"{where} is too large ({len(text)} characters, at most {MAX_JSON_BYTES})")
    depth = 0
    for match in _JSON_TOKENS.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                raise RunError(f"{where} is nested too deeply (more than {MAX_JSON_DEPTH} levels)")
        elif token in "]}":
            depth -= 1
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise RunError(f"{where} is not valid JSON ({str(exc)[:80]})") from None


def fidelity_label(fidelity: str | Mapping[str, Any] | None) -> str:
    """The stored form of a fidelity: a short label, or a JSON object written with sorted keys (so equal
    settings give equal labels). None means :data:`FULL_FIDELITY`."""
    if fidelity is None:
        return FULL_FIDELITY
    if isinstance(fidelity, Mapping):
        fidelity = json.dumps(dict(fidelity), sort_keys=True, separators=(",", ":"))
    if not isinstance(fidelity, str) or not fidelity or len(fidelity) > MAX_FIDELITY_CHARS:
        raise ValueError(f"fidelity must be a non-empty label or JSON object of at most {MAX_FIDELITY_CHARS} "
                         f"characters, got {fidelity!r}")
    return fidelity


# ----------------------------------------------------------------------------------- shape checks on read
def is_token(token: object) -> bool:
    """A prefix token: an operator/variable name or a finite numeric constant."""
    return isinstance(token, str) or (isinstance(token, (int, float)) and not isinstance(token, bool))


def want(value: Any, kind: type | tuple[type, ...], where: str, nullable: bool = False) -> Any:
    """``value`` if it has type ``kind`` (bool is not a number), else RunError naming ``where``."""
    if value is None and nullable:
        return None
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise RunError(f"{where} has the wrong type ({type(value).__name__}: {str(value)[:40]!r})")
    return value


def number(value: Any, where: str, nullable: bool = False) -> float | None:
    """A stored REAL (SQLite may hand back an int); NaN is refused."""
    value = want(value, (int, float), where, nullable)
    if value is None:
        return None
    if math.isnan(value):
        raise RunError(f"{where} is NaN")
    return float(value)


def tree(value: Any, where: str) -> tuple[str | float, ...]:
    """A stored prefix tree: a non-empty list of tokens."""
    if not isinstance(value, list) or not value or not all(map(is_token, value)):
        raise RunError(f"{where} is not a list of prefix tokens")
    return tuple(value)


def state(value: Any, where: str, enum_type: type[enum.Enum]) -> Any:
    """An enum value stored as text."""
    try:
        return enum_type(value)
    except ValueError:
        raise RunError(f"{where} has an unknown value {str(value)[:40]!r}") from None


def task_scores(value: dict[str, Any], where: str) -> dict[str, Any]:
    """A candidate's task scores as the scorer writes them: task name -> {score, normalized, ...}, the two
    numbers (or null) checked, so tables that print them never meet text."""
    for task, scores in value.items():
        if not isinstance(scores, dict):
            raise RunError(f"{where} of task {task[:40]!r} is not an object")
        for field in ("score", "normalized"):
            if field in scores:
                number(scores[field], f"{where} {task[:40]} {field}", nullable=True)
    return value
