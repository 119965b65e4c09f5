"""The run file: one SQLite database per run, the single source of truth of a search.

Everything a search produces is written here as it happens, so that a run can be listed, inspected, resumed
exactly and mined for cached evaluations by any process that points at the file.

Guarantees (the contract the engine relies on)
----------------------------------------------
* **Crash safety.** Every write is one transaction that is committed before the method returns. A process
  killed at any moment (``kill -9``, power loss) loses at most the write in progress, never a committed one;
  a candidate's result is durable once ``record_candidate``/``update_candidate`` returns.
  ``journal_mode=WAL`` with ``synchronous=FULL``: WAL makes commits atomic and lets readers run beside the
  writer; FULL (an fsync of the WAL per commit, rather than NORMAL's fsync per checkpoint) also keeps the
  last commits across an OS crash or power cut. One fsync costs milliseconds, an evaluation costs seconds
  of training, so durability is nearly free here.
* **Exact resume.** ``generations`` holds, per finished generation, the population, the hall of fame and the
  random state, written in one transaction; ``last_generation()`` is the state to continue from.
* **Finished candidates are immutable** (as Optuna's finished trials): ``update_candidate`` refuses to change
  a complete, rejected or failed candidate.
* **Nothing is modified on rejection.** Opening validates the file through a read-only connection first: a
  missing, empty, non-SQLite, truncated, corrupted or foreign file, or one of another schema version, raises
  :class:`~lossforge.errors.RunError` and is left byte-identical.
* **Concurrency.** Any number of processes may read while one writes (WAL); writers queue on a busy timeout.
  Use one ``RunStore`` per process (or thread).
* **JSON only, never pickle.** JSON columns are written with Python's ``json`` and may contain the
  non-standard tokens ``Infinity``/``NaN`` (a failed task's worst score is ``-inf``); tuples read back as
  lists. A NULL JSON column reads as an empty list/dict (or ``None`` where the value is opaque).

Identification
--------------
``PRAGMA application_id`` = :data:`APPLICATION_ID` (ASCII ``LFRG``) marks a lossforge run file;
``PRAGMA user_version`` = :data:`SCHEMA_VERSION`. The ``meta`` table repeats both in readable form.

Schema (version 1)
------------------
``meta(key TEXT PK, value TEXT)``
    ``format`` = ``lossforge-run``, ``schema_version``, ``lossforge_version`` (that created the file),
    ``created_at``, and ``suite_hash`` when given to :meth:`RunStore.create`.
``config(id = 1, document TEXT)``
    The run's configuration, one JSON object written once at creation (search settings, space, suite, seeds,
    package version: whatever the engine passes).
``run_state(id = 1, status, started_at, updated_at, elapsed_s)``
    ``status`` is a :class:`RunStatus` value; ``updated_at`` moves on every write (a ``running`` run whose
    ``updated_at`` is old was killed); ``elapsed_s`` is the time spent in ``running`` state over all sessions.
``candidates``
    ``id INTEGER PK, generation INT, key TEXT`` (canonical hash of the loss), ``structure_key TEXT``,
    ``tree TEXT`` (JSON list of prefix tokens: names and numeric constants),
    ``formula TEXT, latex TEXT, complexity INT``,
    ``status TEXT`` (a :class:`CandidateState` value), ``reason TEXT``, ``fitness REAL`` (non-NULL exactly
    when complete), ``objectives`` (JSON list of floats), ``task_scores`` (JSON object: task name ->
    ``{score, normalized, per-seed list, metrics}``, as the scorer builds it), ``constants`` (JSON list),
    ``duration_s REAL, created_at TEXT, updated_at TEXT, worker TEXT``. Indexed on ``key`` and ``generation``.
``evaluations(suite_hash, key) PK``
    The evaluation cache: ``status`` (complete, rejected or failed), ``reason, fitness, objectives,
    task_scores``, ``candidate_id`` (the candidate of this run that produced it, NULL when imported),
    ``origin`` (NULL when evaluated in this run, else the run file it was imported from), ``created_at``.
``generations(gen INTEGER PK)``
    ``population`` (JSON list, in order), ``hall_of_fame`` (JSON), ``rng_state`` (opaque JSON), ``stats``
    (JSON object: best/median fitness, evaluations, rejections, cache hits, time...), ``finished_at``.
``validations(name TEXT PK)``
    ``task_scores`` (raw per-seed JSON) of a hall-of-fame loss (its key) or a baseline (``baseline:NAME``)
    re-scored on the suite's validation seeds, ``updated_at``.
``baselines(name TEXT PK)``
    ``task_scores`` (JSON) of a reference loss scored on the run's suite, ``updated_at``.

Timestamps are ISO-8601 UTC text. Fitness is higher-is-better, like task scores.
"""

from __future__ import annotations

import enum
import json
import logging
import math
import os
import re
import secrets
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Mapping, Sequence

from lossforge.errors import RunError

__all__ = [
    "APPLICATION_ID",
    "SCHEMA_VERSION",
    "CandidateRecord",
    "CandidateState",
    "EvaluationRecord",
    "GenerationRecord",
    "RunStatus",
    "RunStore",
    "RunSummary",
    "list_runs",
    "resolve_run_path",
]

#: ``PRAGMA application_id`` of every lossforge run file: the ASCII bytes ``LFRG``.
APPLICATION_ID = 0x4C465247
#: ``PRAGMA user_version``: the schema version this module reads and writes.
SCHEMA_VERSION = 1
#: Seconds a writer waits for another writer's transaction before giving up.
BUSY_TIMEOUT_S = 30.0

_SQLITE_MAGIC = b"SQLite format 3\x00"
_RUN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
_log = logging.getLogger(__name__)


class CandidateState(enum.Enum):
    """Life cycle of a candidate, like Optuna's trial states."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETE = "complete"
    REJECTED = "rejected"
    FAILED = "failed"

    def is_finished(self) -> bool:
        """True for the final states (complete, rejected, failed); finished candidates never change."""
        return self not in (CandidateState.PENDING, CandidateState.RUNNING)


class RunStatus(enum.Enum):
    """State of a whole run."""

    RUNNING = "running"
    FINISHED = "finished"
    INTERRUPTED = "interrupted"
    #: a callback asked the search to stop; resumable like an interrupted run
    STOPPED = "stopped"
    FAILED = "failed"


@dataclass(frozen=True)
class CandidateRecord:
    """One row of ``candidates`` as plain values (NULL lists/objects read as empty)."""

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
    objectives: tuple[float, ...]
    task_scores: dict[str, Any]
    constants: tuple[float, ...]
    duration_s: float | None
    created_at: str
    updated_at: str
    worker: str | None


@dataclass(frozen=True)
class EvaluationRecord:
    """One cached evaluation: the result of scoring the loss ``key`` on the suite ``suite_hash``."""

    suite_hash: str
    key: str
    status: CandidateState
    reason: str | None
    fitness: float | None
    objectives: tuple[float, ...]
    task_scores: dict[str, Any]
    candidate_id: int | None
    origin: str | None
    created_at: str


@dataclass(frozen=True)
class GenerationRecord:
    """The engine's state at the end of generation ``gen``: enough to continue the run exactly."""

    gen: int
    population: list[Any]
    hall_of_fame: Any
    rng_state: Any
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


_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE config (id INTEGER PRIMARY KEY CHECK (id = 1), document TEXT NOT NULL)",
    """CREATE TABLE run_state (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        status TEXT NOT NULL CHECK (status IN ('running', 'finished', 'interrupted', 'stopped', 'failed')),
        started_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        elapsed_s REAL NOT NULL DEFAULT 0
    )""",
    """CREATE TABLE candidates (
        id INTEGER PRIMARY KEY,
        generation INTEGER NOT NULL CHECK (generation >= 0),
        key TEXT,
        structure_key TEXT,
        tree TEXT NOT NULL,
        formula TEXT,
        latex TEXT,
        complexity INTEGER,
        status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'complete', 'rejected', 'failed')),
        reason TEXT,
        fitness REAL CHECK ((status = 'complete') = (fitness IS NOT NULL)),
        objectives TEXT,
        task_scores TEXT,
        constants TEXT,
        duration_s REAL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        worker TEXT
    )""",
    "CREATE INDEX candidates_key ON candidates (key)",
    "CREATE INDEX candidates_generation ON candidates (generation)",
    """CREATE TABLE evaluations (
        suite_hash TEXT NOT NULL,
        key TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('complete', 'rejected', 'failed')),
        reason TEXT,
        fitness REAL CHECK ((status = 'complete') = (fitness IS NOT NULL)),
        objectives TEXT,
        task_scores TEXT,
        candidate_id INTEGER REFERENCES candidates (id),
        origin TEXT,
        created_at TEXT NOT NULL,
        PRIMARY KEY (suite_hash, key)
    )""",
    """CREATE TABLE generations (
        gen INTEGER PRIMARY KEY CHECK (gen >= 0),
        population TEXT NOT NULL,
        hall_of_fame TEXT NOT NULL,
        rng_state TEXT,
        stats TEXT NOT NULL,
        finished_at TEXT NOT NULL
    )""",
    "CREATE TABLE baselines (name TEXT PRIMARY KEY, task_scores TEXT NOT NULL, updated_at TEXT NOT NULL)",
    "CREATE TABLE validations (name TEXT PRIMARY KEY, task_scores TEXT NOT NULL, updated_at TEXT NOT NULL)",
)
_TABLES = frozenset({"meta", "config", "run_state", "candidates", "evaluations", "generations", "baselines",
                     "validations"})
_CANDIDATE_COLUMNS = (
    "id, generation, tree, status, key, structure_key, formula, latex, complexity, reason, fitness, "
    "objectives, task_scores, constants, duration_s, created_at, updated_at, worker"
)
_EVALUATION_COLUMNS = (
    "suite_hash, key, status, reason, fitness, objectives, task_scores, candidate_id, origin, created_at"
)
# Ranking used by best(): NULLs last so that incomplete metadata never wins a tie.
_ORDER = {
    "fitness": "fitness DESC, complexity IS NULL, complexity ASC, id ASC",
    "complexity": "complexity IS NULL, complexity ASC, fitness DESC, id ASC",
}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _package_version() -> str:
    try:
        return metadata.version("lossforge")
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


def _dumps(value: Any, what: str) -> str:
    try:
        return json.dumps(value, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be plain JSON data (dict, list, str, number, bool, None): {exc}") from exc


def _float_list(values: Sequence[float], what: str) -> list[float]:
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be a sequence of numbers, got {values!r}") from exc


def _is_token(token: object) -> bool:
    return isinstance(token, str) or (isinstance(token, (int, float)) and not isinstance(token, bool))


def _check_result(state: CandidateState, fitness: float | None) -> None:
    """Fitness is stored exactly for complete results; NaN would silently become NULL in SQLite."""
    if state is CandidateState.COMPLETE:
        if fitness is None or math.isnan(fitness):
            raise ValueError("a complete candidate needs a fitness that is a number (not None or NaN)")
    elif fitness is not None:
        raise ValueError(f"only complete candidates have a fitness; this one is {state.value}")


def _connect(path: Path, *, readonly: bool, immutable: bool = False) -> sqlite3.Connection:
    """Open ``path`` without ever creating it (``mode=rw``/``mode=ro``); autocommit, explicit transactions."""
    uri = f"{path.resolve().as_uri()}?mode={'ro' if readonly else 'rw'}"
    if immutable:
        uri += "&immutable=1"
    conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    conn.row_factory = sqlite3.Row
    return conn


def _check_ids(path: Path, application_id: int, version: int) -> None:
    if application_id != APPLICATION_ID:
        raise RunError(
            f"{path} is an SQLite database but not a lossforge run file "
            f"(application_id {application_id:#x}, expected {APPLICATION_ID:#x})"
        )
    if version < SCHEMA_VERSION:
        raise RunError(
            f"run file {path} has schema version {version}, older than version {SCHEMA_VERSION} that lossforge "
            f"{_package_version()} reads; open it with the lossforge version that wrote it (see its meta "
            "table) or start a new run"
        )
    if version > SCHEMA_VERSION:
        raise RunError(
            f"run file {path} has schema version {version}, newer than version {SCHEMA_VERSION} that lossforge "
            f"{_package_version()} reads; upgrade lossforge (`pip install -U lossforge`) to open it"
        )


def _validate(path: Path) -> None:
    """Raise RunError unless ``path`` is an intact lossforge run file of this schema. Never modifies it."""
    if not path.exists():
        raise RunError(f"no run at {path}; list runs with `lossforge runs`")
    if not path.is_file():
        raise RunError(f"{path} is not a run file (it is not a regular file)")
    try:
        with path.open("rb") as handle:
            header = handle.read(100)
    except OSError as exc:
        raise RunError(f"cannot read run file {path}: {exc.strerror}") from exc
    if not header:
        raise RunError(f"{path} is empty, not a lossforge run file")
    if not header.startswith(_SQLITE_MAGIC):
        raise RunError(f"{path} is not a lossforge run file (not an SQLite database)")
    if len(header) < 100:
        raise RunError(f"run file {path} is truncated ({len(header)} bytes)")
    # The identifiers live in the file header (user_version at byte 60, application_id at 68), so foreign
    # and other-version files are rejected before SQLite touches them.
    _check_ids(path, int.from_bytes(header[68:72], "big", signed=True), int.from_bytes(header[60:64], "big"))
    # A read-only WAL connection creates -wal/-shm files beside the database when they are missing. Their
    # absence means no connection has the file open, so read it as immutable and leave no trace. (A writer
    # opening it during these milliseconds could only make this check fail, never change the file.)
    in_use = Path(f"{path}-wal").exists() or Path(f"{path}-shm").exists()
    try:
        conn = _connect(path, readonly=True, immutable=not in_use)
    except sqlite3.Error as exc:
        raise RunError(f"cannot open run file {path}: {exc}") from exc
    try:
        _check_ids(path, conn.execute("PRAGMA application_id").fetchone()[0],
                   conn.execute("PRAGMA user_version").fetchone()[0])
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        missing = sorted(_TABLES - tables)
        if missing:
            raise RunError(f"run file {path} is incomplete: missing tables {', '.join(missing)}")
        problems = [row[0] for row in conn.execute("PRAGMA quick_check(1)")]
        if problems != ["ok"]:
            raise RunError(f"run file {path} is corrupted ({problems[0]}); restore it from a copy or start a new run")
    except sqlite3.DatabaseError as exc:
        raise RunError(f"run file {path} is corrupted or unreadable ({exc}); restore it from a copy or start "
                       "a new run") from exc
    finally:
        conn.close()


class RunStore:
    """A run file opened for reading or writing. Build with :meth:`create` or :meth:`open`."""

    def __init__(self, path: Path, conn: sqlite3.Connection, readonly: bool) -> None:
        """Internal: use :meth:`create` or :meth:`open`, which validate the file first."""
        self.path = path
        self.readonly = readonly
        self._conn: sqlite3.Connection | None = conn
        # Wall-clock accounting of time spent 'running' in this session, added to the stored elapsed_s.
        self._running_since: float | None = None
        self._elapsed_base = 0.0

    # ----------------------------------------------------------------------------------------- opening
    @classmethod
    def create(cls, path: str | os.PathLike[str], config: Mapping[str, Any], *,
               suite_hash: str | None = None) -> "RunStore":
        """Create a new run file at ``path`` holding ``config`` (a JSON object), in status ``running``.

        Refuses if ``path`` exists. Parent directories are created. The file is built under a temporary
        name and linked into place, so a crash never leaves a half-built run at ``path`` and two concurrent
        creators cannot both succeed. ``suite_hash`` (optional) is recorded in ``meta`` and is the default
        suite for :meth:`import_cache`.
        """
        path = Path(path)
        if path.exists():
            raise RunError(f"a run already exists at {path}; continue it with `lossforge resume {path}` or "
                           "choose another name")
        if not isinstance(config, Mapping):
            raise ValueError(f"config must be a mapping (a JSON object), got {type(config).__name__}")
        document = _dumps(dict(config), "config")
        now = _now()
        meta = {"format": "lossforge-run", "schema_version": str(SCHEMA_VERSION),
                "lossforge_version": _package_version(), "created_at": now}
        if suite_hash is not None:
            meta["suite_hash"] = suite_hash
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.creating")
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except OSError as exc:
            raise RunError(f"cannot create run file {path}: {exc.strerror}") from exc
        try:
            conn = _connect(tmp, readonly=False)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("BEGIN IMMEDIATE")
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", meta.items())
                conn.execute("INSERT INTO config (id, document) VALUES (1, ?)", (document,))
                conn.execute("INSERT INTO run_state (id, status, started_at, updated_at, elapsed_s) "
                             "VALUES (1, 'running', ?, ?, 0)", (now, now))
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                conn.execute("COMMIT")
            finally:
                conn.close()  # the last close checkpoints the WAL into the file and removes -wal/-shm
            os.link(tmp, path)  # atomic and fails if path appeared meanwhile, unlike rename
        except FileExistsError as exc:
            raise RunError(f"a run already exists at {path}; continue it with `lossforge resume {path}` or "
                           "choose another name") from exc
        except (OSError, sqlite3.Error) as exc:
            raise RunError(f"cannot create run file {path}: {exc}") from exc
        finally:
            tmp.unlink(missing_ok=True)
        store = cls.open(path)
        store._start_clock(0.0)
        return store

    @classmethod
    def open(cls, path: str | os.PathLike[str], readonly: bool = False) -> "RunStore":
        """Open an existing run file after validating it read-only (see the module guarantees).

        Raises RunError for a missing, empty, non-SQLite, truncated, corrupted or foreign file and for any
        other schema version. A read-only store refuses writes.
        """
        path = Path(path)
        _validate(path)
        try:
            conn = _connect(path, readonly=readonly)
            conn.execute("PRAGMA foreign_keys = ON")
            if not readonly:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = FULL")
        except sqlite3.Error as exc:
            raise RunError(f"cannot open run file {path}: {exc}") from exc
        return cls(path, conn, readonly)

    def close(self) -> None:
        """Record the elapsed time if the run is running in this session, then close. Idempotent."""
        if self._conn is None:
            return
        try:
            if self._running_since is not None:
                with self._write():
                    pass  # _write() stamps updated_at and elapsed_s
        finally:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> "RunStore":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------ transactions
    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RunError(f"run file {self.path} is closed")
        return self._conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, committed on exit; it also stamps run_state.updated_at and elapsed_s."""
        if self.readonly:
            raise RunError(f"run file {self.path} is open read-only")
        conn = self._db
        try:
            # IMMEDIATE takes the write lock now, so a concurrent writer waits on the busy timeout here
            # instead of failing later when a read transaction would have to be upgraded.
            conn.execute("BEGIN IMMEDIATE")
            yield conn
            conn.execute("UPDATE run_state SET updated_at = ?, elapsed_s = COALESCE(?, elapsed_s) WHERE id = 1",
                         (_now(), self._elapsed()))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise RunError(f"cannot write run file {self.path}: {exc}") from exc
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One read transaction (a consistent snapshot while another process writes)."""
        conn = self._db
        try:
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise RunError(f"cannot read run file {self.path}: {exc}") from exc

    def _elapsed(self) -> float | None:
        if self._running_since is None:
            return None
        return self._elapsed_base + time.monotonic() - self._running_since

    def _start_clock(self, stored_elapsed: float) -> None:
        self._elapsed_base = stored_elapsed
        self._running_since = time.monotonic()

    def _loads(self, text: str | None, default: Any, what: str) -> Any:
        if text is None:
            return default
        try:
            return json.loads(text)
        except ValueError as exc:
            raise RunError(f"run file {self.path}: {what} is not valid JSON ({exc})") from exc

    # ------------------------------------------------------------------------------- run-level records
    def config(self) -> dict[str, Any]:
        """The configuration the run was created with."""
        with self._read() as conn:
            row = conn.execute("SELECT document FROM config WHERE id = 1").fetchone()
        document = self._loads(row["document"] if row else None, None, "config")
        if not isinstance(document, dict):
            raise RunError(f"run file {self.path} has no configuration object")
        return document

    @property
    def suite_hash(self) -> str | None:
        """The suite hash given at creation, or None."""
        with self._read() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'suite_hash'").fetchone()
        return row["value"] if row else None

    def set_status(self, status: RunStatus | str) -> None:
        """Set the run's status. ``running`` starts this session's elapsed-time clock; others stop it."""
        status = RunStatus(status)
        with self._write() as conn:  # stamps elapsed_s with the clock as it was before this call
            conn.execute("UPDATE run_state SET status = ? WHERE id = 1", (status.value,))
            stored = conn.execute("SELECT elapsed_s FROM run_state WHERE id = 1").fetchone()[0]
        if status is not RunStatus.RUNNING:
            self._running_since = None
        elif self._running_since is None:
            self._start_clock(stored or 0.0)

    def summary(self) -> RunSummary:
        """Status, generations done, candidates, best fitness and elapsed time of this run."""
        with self._read() as conn:
            state = conn.execute("SELECT status, started_at, updated_at, elapsed_s FROM run_state").fetchone()
            gens = conn.execute("SELECT COUNT(*) AS n, MAX(gen) AS last FROM generations").fetchone()
            cands = conn.execute("SELECT COUNT(*) AS n, MAX(CASE WHEN status = 'complete' THEN fitness END) "
                                 "AS best FROM candidates").fetchone()
            version = conn.execute("SELECT value FROM meta WHERE key = 'lossforge_version'").fetchone()
        if state is None:
            raise RunError(f"run file {self.path} has no run_state row")
        try:
            status = RunStatus(state["status"])
        except ValueError as exc:
            raise RunError(f"run file {self.path} has an unknown status {state['status']!r}") from exc
        elapsed = self._elapsed()
        return RunSummary(
            path=self.path,
            name=self.path.stem,
            status=status,
            generations=gens["n"],
            last_generation=gens["last"],
            candidates=cands["n"],
            best_fitness=cands["best"],
            elapsed_s=elapsed if elapsed is not None else (state["elapsed_s"] or 0.0),
            started_at=state["started_at"],
            updated_at=state["updated_at"],
            lossforge_version=version["value"] if version else None,
        )

    # -------------------------------------------------------------------------------------- candidates
    def _candidate_fields(self, **fields: Any) -> dict[str, Any]:
        """Encode the given (non-None) candidate fields as column values."""
        encoded: dict[str, Any] = {}
        for name, value in fields.items():
            if value is None:
                continue
            if name == "tree":
                if not isinstance(value, (list, tuple)) or not value or not all(map(_is_token, value)):
                    raise ValueError(f"tree must be a non-empty list of prefix tokens (str or number), got "
                                     f"{value!r}")
                value = _dumps(list(value), "tree")
            elif name in ("objectives", "constants"):
                value = _dumps(_float_list(value, name), name)
            elif name == "task_scores":
                if not isinstance(value, Mapping):
                    raise ValueError(f"task_scores must be a mapping of task name to scores, got {value!r}")
                value = _dumps(dict(value), "task_scores")
            elif name == "complexity":
                value = int(value)
            elif name in ("fitness", "duration_s"):
                value = float(value)
            encoded[name] = value
        return encoded

    def _cache(self, conn: sqlite3.Connection, candidate_id: int, suite_hash: str) -> None:
        """Write a finished candidate's result to the evaluation cache (latest result wins)."""
        row = conn.execute("SELECT key, status, reason, fitness, objectives, task_scores FROM candidates "
                           "WHERE id = ?", (candidate_id,)).fetchone()
        if row["key"] is None:
            raise ValueError(f"candidate {candidate_id} has no key, so it cannot be cached")
        if not CandidateState(row["status"]).is_finished():
            raise ValueError(f"candidate {candidate_id} is {row['status']}; only finished results are cached")
        conn.execute(
            "INSERT INTO evaluations (suite_hash, key, status, reason, fitness, objectives, task_scores, "
            "candidate_id, origin, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, ?) "
            "ON CONFLICT (suite_hash, key) DO UPDATE SET status = excluded.status, reason = excluded.reason, "
            "fitness = excluded.fitness, objectives = excluded.objectives, task_scores = excluded.task_scores, "
            "candidate_id = excluded.candidate_id, origin = NULL, created_at = excluded.created_at",
            (suite_hash, row["key"], row["status"], row["reason"], row["fitness"], row["objectives"],
             row["task_scores"], candidate_id, _now()),
        )

    def record_candidate(
        self,
        generation: int,
        tree: Sequence[str | float],
        *,
        status: CandidateState | str = CandidateState.PENDING,
        key: str | None = None,
        structure_key: str | None = None,
        formula: str | None = None,
        latex: str | None = None,
        complexity: int | None = None,
        reason: str | None = None,
        fitness: float | None = None,
        objectives: Sequence[float] | None = None,
        task_scores: Mapping[str, Any] | None = None,
        constants: Sequence[float] | None = None,
        duration_s: float | None = None,
        worker: str | None = None,
        suite_hash: str | None = None,
    ) -> int:
        """Insert a candidate and commit; returns its id. Durable once this returns.

        ``fitness`` is required for ``complete`` and forbidden otherwise. With ``suite_hash``, a finished
        result is also written to the evaluation cache in the same transaction.
        """
        state = CandidateState(status)
        _check_result(state, fitness)
        if int(generation) < 0:
            raise ValueError(f"generation must be >= 0, got {generation}")
        values = self._candidate_fields(
            tree=tree, key=key, structure_key=structure_key, formula=formula, latex=latex,
            complexity=complexity, reason=reason, fitness=fitness, objectives=objectives,
            task_scores=task_scores, constants=constants, duration_s=duration_s, worker=worker,
        )
        now = _now()
        values.update(generation=int(generation), status=state.value, created_at=now, updated_at=now)
        with self._write() as conn:
            cursor = conn.execute(
                f"INSERT INTO candidates ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
                tuple(values.values()),
            )
            candidate_id = int(cursor.lastrowid)
            if suite_hash is not None:
                self._cache(conn, candidate_id, suite_hash)
        return candidate_id

    def update_candidate(
        self,
        candidate_id: int,
        status: CandidateState | str,
        *,
        key: str | None = None,
        structure_key: str | None = None,
        formula: str | None = None,
        latex: str | None = None,
        complexity: int | None = None,
        reason: str | None = None,
        fitness: float | None = None,
        objectives: Sequence[float] | None = None,
        task_scores: Mapping[str, Any] | None = None,
        constants: Sequence[float] | None = None,
        duration_s: float | None = None,
        worker: str | None = None,
        suite_hash: str | None = None,
    ) -> None:
        """Move a pending or running candidate to ``status`` and set the given fields; commit.

        Fields left as None keep their stored value. ``fitness`` is required for ``complete`` and forbidden
        otherwise. Finished candidates are immutable (ValueError). With ``suite_hash``, a finished result is
        also written to the evaluation cache in the same transaction.
        """
        state = CandidateState(status)
        _check_result(state, fitness)
        values = self._candidate_fields(
            key=key, structure_key=structure_key, formula=formula, latex=latex, complexity=complexity,
            reason=reason, fitness=fitness, objectives=objectives, task_scores=task_scores,
            constants=constants, duration_s=duration_s, worker=worker,
        )
        values.update(status=state.value, updated_at=_now())
        with self._write() as conn:
            cursor = conn.execute(
                f"UPDATE candidates SET {', '.join(f'{column} = ?' for column in values)} "
                "WHERE id = ? AND status IN ('pending', 'running')",
                (*values.values(), candidate_id),
            )
            if cursor.rowcount == 0:
                row = conn.execute("SELECT status FROM candidates WHERE id = ?", (candidate_id,)).fetchone()
                if row is None:
                    raise ValueError(f"run file {self.path} has no candidate {candidate_id}")
                raise ValueError(f"candidate {candidate_id} is already {row['status']}; finished candidates "
                                 "cannot change")
            if suite_hash is not None:
                self._cache(conn, candidate_id, suite_hash)

    def _candidate(self, row: sqlite3.Row) -> CandidateRecord:
        where = f"candidate {row['id']}"
        return CandidateRecord(
            id=row["id"],
            generation=row["generation"],
            tree=tuple(self._loads(row["tree"], [], f"{where} tree")),
            status=CandidateState(row["status"]),
            key=row["key"],
            structure_key=row["structure_key"],
            formula=row["formula"],
            latex=row["latex"],
            complexity=row["complexity"],
            reason=row["reason"],
            fitness=row["fitness"],
            objectives=tuple(self._loads(row["objectives"], [], f"{where} objectives")),
            task_scores=self._loads(row["task_scores"], {}, f"{where} task_scores"),
            constants=tuple(self._loads(row["constants"], [], f"{where} constants")),
            duration_s=row["duration_s"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            worker=row["worker"],
        )

    def candidate(self, candidate_id: int) -> CandidateRecord | None:
        """The candidate with this id, or None."""
        with self._read() as conn:
            row = conn.execute(f"SELECT {_CANDIDATE_COLUMNS} FROM candidates WHERE id = ?",
                               (candidate_id,)).fetchone()
        return self._candidate(row) if row else None

    def candidates(self, generation: int | None = None,
                   status: CandidateState | str | None = None) -> list[CandidateRecord]:
        """Candidates in id order, optionally only those of one generation and/or one status."""
        clauses, params = [], []
        if generation is not None:
            clauses.append("generation = ?")
            params.append(int(generation))
        if status is not None:
            clauses.append("status = ?")
            params.append(CandidateState(status).value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._read() as conn:
            rows = conn.execute(f"SELECT {_CANDIDATE_COLUMNS} FROM candidates {where} ORDER BY id", params)
            return [self._candidate(row) for row in rows]

    def best(self, n: int = 1, by: Literal["fitness", "complexity"] = "fitness") -> list[CandidateRecord]:
        """The ``n`` best complete candidates with distinct keys (each key's best row), best first.

        ``by="fitness"``: highest fitness first, ties to the lower complexity, then the lower id.
        ``by="complexity"``: simplest first, ties to the higher fitness, then the lower id.
        Candidates without a key count as distinct.
        """
        if by not in _ORDER:
            raise ValueError(f"best(by=...) must be one of {', '.join(_ORDER)}, got {by!r}")
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        order = _ORDER[by]
        query = (
            f"SELECT {_CANDIDATE_COLUMNS} FROM ("
            f"  SELECT *, ROW_NUMBER() OVER (PARTITION BY COALESCE(key, 'id:' || id) ORDER BY {_ORDER['fitness']})"
            "   AS rank_in_key FROM candidates WHERE status = 'complete'"
            f") WHERE rank_in_key = 1 ORDER BY {order} LIMIT ?"
        )
        with self._read() as conn:
            return [self._candidate(row) for row in conn.execute(query, (n,))]

    # ------------------------------------------------------------------------------------- generations
    def record_generation(self, gen: int, population: Sequence[Any], hall_of_fame: Any, rng_state: Any,
                          stats: Mapping[str, Any]) -> None:
        """Record the engine's state at the end of generation ``gen`` in one transaction.

        ``gen`` must be greater than every recorded generation. All values are JSON data; ``rng_state`` is
        stored as given (opaque to storage; tuples come back as lists).
        """
        gen = int(gen)
        if gen < 0:
            raise ValueError(f"gen must be >= 0, got {gen}")
        encoded = (_dumps(list(population), "population"), _dumps(hall_of_fame, "hall_of_fame"),
                   _dumps(rng_state, "rng_state"), _dumps(dict(stats), "stats"))
        with self._write() as conn:
            last = conn.execute("SELECT MAX(gen) FROM generations").fetchone()[0]
            if last is not None and gen <= last:
                raise ValueError(f"generation {gen} cannot follow recorded generation {last}")
            conn.execute("INSERT INTO generations (gen, population, hall_of_fame, rng_state, stats, finished_at) "
                         "VALUES (?, ?, ?, ?, ?, ?)", (gen, *encoded, _now()))

    def _generation(self, row: sqlite3.Row) -> GenerationRecord:
        where = f"generation {row['gen']}"
        return GenerationRecord(
            gen=row["gen"],
            population=self._loads(row["population"], [], f"{where} population"),
            hall_of_fame=self._loads(row["hall_of_fame"], None, f"{where} hall_of_fame"),
            rng_state=self._loads(row["rng_state"], None, f"{where} rng_state"),
            stats=self._loads(row["stats"], {}, f"{where} stats"),
            finished_at=row["finished_at"],
        )

    def last_generation(self) -> GenerationRecord | None:
        """The last completed generation (the state to resume from), or None before the first."""
        with self._read() as conn:
            row = conn.execute("SELECT * FROM generations ORDER BY gen DESC LIMIT 1").fetchone()
        return self._generation(row) if row else None

    def generations(self) -> list[GenerationRecord]:
        """All completed generations in order."""
        with self._read() as conn:
            return [self._generation(row) for row in conn.execute("SELECT * FROM generations ORDER BY gen")]

    # ------------------------------------------------------------------------------- evaluation cache
    def lookup(self, suite_hash: str, key: str) -> EvaluationRecord | None:
        """The cached result of loss ``key`` on suite ``suite_hash``, or None."""
        with self._read() as conn:
            row = conn.execute(f"SELECT {_EVALUATION_COLUMNS} FROM evaluations WHERE suite_hash = ? AND key = ?",
                               (suite_hash, key)).fetchone()
        if row is None:
            return None
        where = f"cached evaluation {key}"
        return EvaluationRecord(
            suite_hash=row["suite_hash"],
            key=row["key"],
            status=CandidateState(row["status"]),
            reason=row["reason"],
            fitness=row["fitness"],
            objectives=tuple(self._loads(row["objectives"], [], f"{where} objectives")),
            task_scores=self._loads(row["task_scores"], {}, f"{where} task_scores"),
            candidate_id=row["candidate_id"],
            origin=row["origin"],
            created_at=row["created_at"],
        )

    def import_cache(self, other_path: str | os.PathLike[str], suite_hash: str | None = None) -> int:
        """Copy another run's cached evaluations for ``suite_hash`` (default: this run's) into this run.

        The other file is validated and read read-only. Entries this run already has are kept. Returns the
        number of entries added.
        """
        suite_hash = suite_hash if suite_hash is not None else self.suite_hash
        if suite_hash is None:
            raise ValueError("this run was created without a suite hash; pass suite_hash= to import_cache")
        other = Path(other_path)
        if other.exists() and other.samefile(self.path):
            raise ValueError(f"cannot import the cache of {other} into itself")
        with RunStore.open(other, readonly=True) as source, source._read() as conn:
            rows = conn.execute(
                "SELECT suite_hash, key, status, reason, fitness, objectives, task_scores, origin, created_at "
                "FROM evaluations WHERE suite_hash = ?", (suite_hash,)).fetchall()
        origin = str(other.resolve())
        with self._write() as conn:
            cursor = conn.executemany(
                "INSERT INTO evaluations (suite_hash, key, status, reason, fitness, objectives, task_scores, "
                "candidate_id, origin, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, NULL, ?, ?) "
                "ON CONFLICT (suite_hash, key) DO NOTHING",
                [(r["suite_hash"], r["key"], r["status"], r["reason"], r["fitness"], r["objectives"],
                  r["task_scores"], r["origin"] or origin, r["created_at"]) for r in rows],
            )
            return cursor.rowcount if rows else 0

    # --------------------------------------------------------------------------------------- baselines
    def set_baseline(self, name: str, task_scores: Mapping[str, Any]) -> None:
        """Store (or replace) the task scores of reference loss ``name`` on this run's suite."""
        if not isinstance(task_scores, Mapping):
            raise ValueError(f"task_scores must be a mapping of task name to scores, got {task_scores!r}")
        document = _dumps(dict(task_scores), "task_scores")
        with self._write() as conn:
            conn.execute("INSERT INTO baselines (name, task_scores, updated_at) VALUES (?, ?, ?) "
                         "ON CONFLICT (name) DO UPDATE SET task_scores = excluded.task_scores, "
                         "updated_at = excluded.updated_at", (name, document, _now()))

    def baselines(self) -> dict[str, dict[str, Any]]:
        """All stored baselines: reference loss name -> task scores, by name."""
        with self._read() as conn:
            rows = conn.execute("SELECT name, task_scores FROM baselines ORDER BY name").fetchall()
        return {row["name"]: self._loads(row["task_scores"], {}, f"baseline {row['name']}") for row in rows}

    def baseline(self, name: str) -> dict[str, Any] | None:
        """The task scores of reference loss ``name``, or None."""
        return self.baselines().get(name)

    def set_validation(self, name: str, task_scores: Mapping[str, Any]) -> None:
        """Store (or replace) the raw results of loss ``name`` (a candidate key or ``baseline:NAME``) on the
        suite's *validation* seeds."""
        if not isinstance(task_scores, Mapping):
            raise ValueError(f"task_scores must be a mapping of task name to scores, got {task_scores!r}")
        document = _dumps(dict(task_scores), "task_scores")
        with self._write() as conn:
            conn.execute("INSERT INTO validations (name, task_scores, updated_at) VALUES (?, ?, ?) "
                         "ON CONFLICT (name) DO UPDATE SET task_scores = excluded.task_scores, "
                         "updated_at = excluded.updated_at", (name, document, _now()))

    # ------------------------------------------------------------------------------------------ rungs
    # Screening results (a loss scored at a lower fidelity than the search's) live in their own small
    # table, created on first use, so that candidates and the evaluation cache hold full-fidelity results
    # only (the hall of fame and the final ranking read those).
    _RUNGS = ("CREATE TABLE IF NOT EXISTS rungs (id INTEGER PRIMARY KEY, generation INTEGER NOT NULL, "
              "key TEXT NOT NULL, tree TEXT NOT NULL, fidelity TEXT NOT NULL, status TEXT NOT NULL, "
              "fitness REAL, reason TEXT, task_scores TEXT NOT NULL, created_at TEXT NOT NULL)")

    def record_rung(self, generation: int, tree: Sequence[str | float], *, key: str, fidelity: Mapping[str, Any],
                    status: CandidateState | str, fitness: float | None, reason: str | None,
                    task_scores: Mapping[str, Any]) -> None:
        """Record a screening result of loss ``key`` at ``fidelity`` (plain data); durable once this returns."""
        state = CandidateState(status)
        _check_result(state, fitness)
        values = (int(generation), key, _dumps(list(tree), "tree"), _dumps(dict(fidelity), "fidelity"), state.value,
                  None if fitness is None else float(fitness), reason, _dumps(dict(task_scores), "task_scores"), _now())
        with self._write() as conn:
            conn.execute(self._RUNGS)
            conn.execute("INSERT INTO rungs (generation, key, tree, fidelity, status, fitness, reason, task_scores, "
                         "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", values)

    def rungs(self) -> list[dict[str, Any]]:
        """All screening results in the order recorded (empty for a run that screened nothing)."""
        with self._read() as conn:
            if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'rungs'").fetchone() is None:
                return []  # nothing was screened
            rows = conn.execute("SELECT * FROM rungs ORDER BY id").fetchall()
        return [{"generation": r["generation"], "key": r["key"], "tree": self._loads(r["tree"], [], "rung tree"),
                 "fidelity": self._loads(r["fidelity"], {}, "rung fidelity"), "status": CandidateState(r["status"]),
                 "fitness": r["fitness"], "reason": r["reason"],
                 "task_scores": self._loads(r["task_scores"], {}, "rung task_scores")} for r in rows]

    def validations(self) -> dict[str, dict[str, Any]]:
        """All validation results: name -> raw task scores."""
        with self._read() as conn:
            rows = conn.execute("SELECT name, task_scores FROM validations ORDER BY name").fetchall()
        return {row["name"]: self._loads(row["task_scores"], {}, f"validation {row['name']}") for row in rows}


def list_runs(directory: str | os.PathLike[str],
              on_skip: Callable[[Path, RunError], None] | None = None) -> list[RunSummary]:
    """Summaries of the run files (``*.db``) in ``directory``, by file name; [] if it does not exist.

    A file that cannot be opened as a run is skipped and reported to ``on_skip(path, error)`` (default: a
    logged warning); this never raises for a bad file.
    """
    directory = Path(directory)
    if not directory.is_dir():
        if directory.exists():
            raise RunError(f"{directory} is not a directory of runs")
        return []
    summaries = []
    for path in sorted(directory.glob("*.db")):
        try:
            with RunStore.open(path, readonly=True) as store:
                summaries.append(store.summary())
        except RunError as exc:
            if on_skip is None:
                _log.warning("skipping %s: %s", path, exc)
            else:
                on_skip(path, exc)
    return summaries


def resolve_run_path(name_or_path: str | os.PathLike[str], runs_dir: str | os.PathLike[str] = "runs") -> Path:
    """Turn a run argument into a path.

    An existing file is used as is; an argument with a directory part or a ``.db`` suffix is a path (it
    may not exist yet, e.g. for a new run); anything else is a run name mapped to ``runs_dir/NAME.db``. A
    name must match ``[A-Za-z0-9_][A-Za-z0-9._-]*``.
    """
    path = Path(name_or_path)
    text = os.fspath(name_or_path)
    if path.is_file() or path.suffix == ".db" or os.sep in text or (os.altsep and os.altsep in text):
        return path
    if not _RUN_NAME.fullmatch(text):
        raise RunError(f"invalid run name {text!r}: use letters, digits, '.', '_' and '-', not starting with "
                       "'.' or '-' (or give a path to a .db file)")
    return Path(runs_dir) / f"{text}.db"
