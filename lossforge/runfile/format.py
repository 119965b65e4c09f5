"""The run file's format: how a file is identified, its schema, validation before use, atomic creation.

Identification
--------------
``PRAGMA application_id`` = :data:`APPLICATION_ID` (ASCII ``LFRG``) marks a lossforge run file;
``PRAGMA user_version`` = :data:`SCHEMA_VERSION`. Both live in the 100-byte file header, so a foreign or
other-version file is refused before SQLite reads anything else. The ``meta`` table repeats them readably.

Schema (version 2)
------------------
``meta(key, value)``: ``format`` = ``lossforge-run``, ``schema_version``, ``lossforge_version``, ``created_at``,
    ``suite_hash``.
``config(id = 1, document)``: the run's configuration, one JSON object written at creation.
``run_state(id = 1, status, started_at, updated_at, elapsed_s)``.
``lease(id = 1, host, pid, process_start, token, acquired_at, heartbeat_at)``: the process writing the run
    (no row: nobody).
``results``: one row per result. ``kind`` is ``loss`` (``name`` = the canonical key; ``status``, ``reason``,
    ``fitness`` set), ``baseline`` or ``validation`` (raw task scores only; a validation at fidelity
    ``confirm`` is a re-scoring on the suite's confirm seeds). Unique on ``(kind, suite_hash, name,
    fidelity)``; ``fidelity`` is ``full`` or a rung's label. ``origin`` is NULL when scored in this run, else
    the run file it was imported from.
``candidates``: ``id, generation, key, structure_key, tree`` (JSON prefix tokens), ``formula, latex,
    complexity, constants, result_id`` (-> ``results.id``; NULL while pending), ``duration_s, worker,
    created_at``. No result column is repeated here.
``generations(gen, population, stats, finished_at)``: the population (trees and fitness, in order) and the
    statistics of each finished generation.

Version 1 files (lossforge before the run-file package) are refused with
``run file PATH has schema version 1, older than version 2 that lossforge X reads; ...``; no migration.
"""

from __future__ import annotations

import os
import sqlite3
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

from lossforge.atomic import temporary_path
from lossforge.errors import RunError
from lossforge.runfile.records import dumps

#: ``PRAGMA application_id`` of every lossforge run file: the ASCII bytes ``LFRG``.
APPLICATION_ID = 0x4C465247
#: ``PRAGMA user_version``: the schema version this package reads and writes.
SCHEMA_VERSION = 2
#: Seconds a writer waits for another writer's transaction before giving up.
BUSY_TIMEOUT_S = 30.0

_SQLITE_MAGIC = b"SQLite format 3\x00"
#: The longest run file name (bytes): SQLite's side files add up to 8 (``-journal``) to the 255 that
#: file systems allow in a name, and a run whose side file cannot be created cannot be written.
MAX_NAME_BYTES = 255 - len("-journal")

SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE config (id INTEGER PRIMARY KEY CHECK (id = 1), document TEXT NOT NULL)",
    """CREATE TABLE run_state (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        status TEXT NOT NULL CHECK (status IN ('running', 'finished', 'interrupted', 'stopped', 'failed')),
        started_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        elapsed_s REAL NOT NULL DEFAULT 0
    )""",
    """CREATE TABLE lease (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        process_start TEXT NOT NULL,
        token TEXT NOT NULL,
        acquired_at REAL NOT NULL,
        heartbeat_at REAL NOT NULL
    )""",
    """CREATE TABLE results (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('loss', 'baseline', 'validation')),
        suite_hash TEXT NOT NULL,
        name TEXT NOT NULL,
        fidelity TEXT NOT NULL DEFAULT 'full',
        status TEXT CHECK (status IN ('complete', 'rejected', 'failed')),
        reason TEXT,
        fitness REAL,
        task_scores TEXT NOT NULL,
        origin TEXT,
        created_at TEXT NOT NULL,
        UNIQUE (kind, suite_hash, name, fidelity),
        CHECK ((kind = 'loss') = (status IS NOT NULL)),
        CHECK ((status = 'complete') = (fitness IS NOT NULL))
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
        constants TEXT,
        result_id INTEGER REFERENCES results (id),
        duration_s REAL,
        worker TEXT,
        created_at TEXT NOT NULL
    )""",
    "CREATE INDEX candidates_key ON candidates (key)",
    "CREATE INDEX candidates_generation ON candidates (generation)",
    "CREATE INDEX candidates_result ON candidates (result_id)",
    # a loss scored at a screening fidelity (a racing rung): its result lives in ``results`` at that
    # fidelity; candidates hold full-fidelity results only, so the hall of fame never sees a screening score
    """CREATE TABLE screenings (
        id INTEGER PRIMARY KEY,
        generation INTEGER NOT NULL CHECK (generation >= 0),
        tree TEXT NOT NULL,
        result_id INTEGER NOT NULL REFERENCES results (id),
        created_at TEXT NOT NULL
    )""",
    """CREATE TABLE generations (
        gen INTEGER PRIMARY KEY CHECK (gen >= 0),
        population TEXT NOT NULL,
        stats TEXT NOT NULL,
        finished_at TEXT NOT NULL
    )""",
)
TABLES = frozenset({"meta", "config", "run_state", "lease", "results", "candidates", "screenings", "generations"})


def now_iso() -> str:
    """The time stamps of a run file: ISO-8601 UTC with milliseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def package_version() -> str:
    """The installed lossforge version, or ``unknown`` in a source tree never installed."""
    try:
        return metadata.version("lossforge")
    except metadata.PackageNotFoundError:
        return "unknown"


def connect(path: Path, *, readonly: bool, immutable: bool = False) -> sqlite3.Connection:
    """Open ``path`` without ever creating it (``mode=rw``/``mode=ro``); autocommit, explicit transactions."""
    uri = f"{path.resolve().as_uri()}?mode={'ro' if readonly else 'rw'}"
    if immutable:
        uri += "&immutable=1"
    conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                           check_same_thread=False)
    conn.row_factory = sqlite3.Row
    return conn


def in_use(path: Path) -> bool:
    """True while -wal/-shm files exist beside ``path``: some connection has it open (or a writer died).
    SQLite names them after the file a symlink points to, so that is where they are looked for."""
    real = path.resolve()
    return Path(f"{real}-wal").exists() or Path(f"{real}-shm").exists()


def check_ids(path: Path, application_id: int, version: int) -> None:
    """RunError unless the header's ids are a lossforge run file of :data:`SCHEMA_VERSION`."""
    if application_id != APPLICATION_ID:
        raise RunError(
            f"{path} is an SQLite database but not a lossforge run file "
            f"(application_id {application_id:#x}, expected {APPLICATION_ID:#x})"
        )
    if version < SCHEMA_VERSION:
        raise RunError(
            f"run file {path} has schema version {version}, older than version {SCHEMA_VERSION} that lossforge "
            f"{package_version()} reads; open it with the lossforge version that wrote it (see its meta "
            "table) or start a new run"
        )
    if version > SCHEMA_VERSION:
        raise RunError(
            f"run file {path} has schema version {version}, newer than version {SCHEMA_VERSION} that lossforge "
            f"{package_version()} reads; upgrade lossforge (`pip install -U lossforge`) to open it"
        )


def validate(path: Path) -> None:
    """Raise RunError unless ``path`` is an intact lossforge run file of this schema. Never modifies it."""
    try:
        exists, regular = path.exists(), path.is_file()
    except OSError as exc:  # e.g. a name longer than the file system allows
        raise RunError(f"cannot read run file {path}: {exc.strerror}") from None
    if not exists:
        raise RunError(f"no run at {path}; list runs with `lossforge runs`")
    if not regular:
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
    check_ids(path, int.from_bytes(header[68:72], "big", signed=True), int.from_bytes(header[60:64], "big"))
    # A read-only WAL connection creates -wal/-shm files when they are missing; their absence means no
    # connection has the file open, so read it as immutable and leave no trace.
    try:
        conn = connect(path, readonly=True, immutable=not in_use(path))
    except sqlite3.Error as exc:
        raise RunError(f"cannot open run file {path}: {exc}") from exc
    try:
        check_ids(path, conn.execute("PRAGMA application_id").fetchone()[0],
                  conn.execute("PRAGMA user_version").fetchone()[0])
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        missing = sorted(TABLES - tables)
        if missing:
            raise RunError(f"run file {path} is incomplete: missing tables {', '.join(missing)}")
        for table in ("config", "run_state"):  # the one-row tables every reader needs
            if conn.execute(f"SELECT COUNT(*) FROM {table} WHERE id = 1").fetchone()[0] != 1:
                raise RunError(f"run file {path} is incomplete: its {table} row is missing")
        problems = [row[0] for row in conn.execute("PRAGMA quick_check(1)")]
        if problems != ["ok"]:
            raise RunError(f"run file {path} is corrupted ({problems[0]}); restore it from a copy or start a new run")
    except sqlite3.DatabaseError as exc:
        raise RunError(f"run file {path} is corrupted or unreadable ({exc}); restore it from a copy or start "
                       "a new run") from exc
    finally:
        conn.close()


def _exists_error(path: Path) -> RunError:
    from lossforge.atomic import _is_sqlite

    if not _is_sqlite(path):  # a data file or a directory: `lossforge resume` it would only fail in turn
        kind = "a directory" if path.is_dir() else "no run file"
        return RunError(f"{path} already exists and is {kind}; a new run never replaces it: choose another --run "
                        "name or path")
    return RunError(f"a run already exists at {path}; continue it with `lossforge resume {path}` or choose "
                    "another name")


def create_file(path: Path, config: Mapping[str, Any], suite_hash: str | None) -> None:
    """Build a complete run file under a temporary name and link it into place.

    Refuses if ``path`` exists; a crash never leaves a half-built run at ``path``, and of two concurrent
    creators only one succeeds (``os.link`` fails on an existing name, unlike ``rename``).
    """
    if len(os.fsencode(path.name)) > MAX_NAME_BYTES:
        raise RunError(f"run file name {path.name[:40]}... is too long ({len(os.fsencode(path.name))} bytes): "
                       f"SQLite's side files need a name of at most {MAX_NAME_BYTES}; choose a shorter name")
    try:
        if path.exists():
            raise _exists_error(path)
    except OSError as exc:
        raise RunError(f"cannot create run file {path}: {exc.strerror}") from None
    # a journal left by a removed run file (a killed writer, then `rm RUN.db`) would be applied by SQLite
    # to the new file under the same name, mixing the dead run's pages into the new run
    stale = [p for p in (Path(f"{path}-wal"), Path(f"{path}-journal")) if p.exists() and p.stat().st_size > 0]
    if stale:
        raise RunError(f"{stale[0]} is left from a removed run file; SQLite would apply it to a new run at "
                       f"{path}: remove {path}-wal, {path}-shm and {path}-journal, or choose another name")
    if not isinstance(config, Mapping):
        raise ValueError(f"config must be a mapping (a JSON object), got {type(config).__name__}")
    document = dumps(dict(config), "config")
    now = now_iso()
    meta = {"format": "lossforge-run", "schema_version": str(SCHEMA_VERSION),
            "lossforge_version": package_version(), "created_at": now}
    if suite_hash is not None:
        meta["suite_hash"] = suite_hash
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_path(path, "creating")  # a short name: the final one may be MAX_NAME_BYTES long
        os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    except OSError as exc:
        raise RunError(f"cannot create run file {path}: {exc.strerror}") from exc
    try:
        conn = connect(tmp, readonly=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("BEGIN IMMEDIATE")
            for statement in SCHEMA:
                conn.execute(statement)
            conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", meta.items())
            conn.execute("INSERT INTO config (id, document) VALUES (1, ?)", (document,))
            conn.execute("INSERT INTO run_state (id, status, started_at, updated_at, elapsed_s) "
                         "VALUES (1, 'running', ?, ?, 0)", (now, now))
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
            # into the file now, where an error is seen: the checkpoint of close() fails silently (a full
            # disk), which would link a file without its tables into place and leave the WAL beside ``tmp``
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            conn.close()  # the last close removes -wal/-shm
        os.link(tmp, path)
    except FileExistsError:
        raise _exists_error(path) from None
    except (OSError, sqlite3.Error) as exc:
        raise RunError(f"cannot create run file {path}: {exc}") from exc
    finally:
        for leftover in (tmp, *(Path(f"{tmp}{suffix}") for suffix in ("-wal", "-shm", "-journal"))):
            leftover.unlink(missing_ok=True)
