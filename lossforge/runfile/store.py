"""RunStore: the queries of a run file (see :mod:`lossforge.runfile.format` for the schema)."""

from __future__ import annotations

import os
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping, Sequence

from lossforge.errors import RunError
from lossforge.runfile import records as rec
from lossforge.runfile.format import connect, create_file, in_use, now_iso, validate
from lossforge.runfile.lease import Lease, is_stale, read_lease
from lossforge.runfile.records import (
    CONFIRM_FIDELITY,
    FULL_FIDELITY,
    CandidateRecord,
    CandidateState,
    EvaluationRecord,
    GenerationRecord,
    LeaseRecord,
    ResultKind,
    RunStatus,
    RunSummary,
    dumps,
    fidelity_label,
)

_CANDIDATE_SELECT = (
    "SELECT c.id, c.generation, c.tree, c.key, c.structure_key, c.formula, c.latex, c.complexity, c.constants, "
    "c.duration_s, c.worker, c.created_at, COALESCE(r.status, 'pending') AS status, r.reason, r.fitness, "
    "r.task_scores, r.fidelity, r.origin FROM candidates c LEFT JOIN results r ON r.id = c.result_id"
)
_EVALUATION_SELECT = (
    "SELECT r.suite_hash, r.name, r.fidelity, r.status, r.reason, r.fitness, r.task_scores, r.origin, "
    "r.created_at, (SELECT MIN(c.id) FROM candidates c WHERE c.result_id = r.id) AS candidate_id FROM results r"
)
# Ranking used by best(): NULLs last so that incomplete metadata never wins a tie.
_ORDER = {
    "fitness": "fitness DESC, complexity IS NULL, complexity ASC, id ASC",
    "complexity": "complexity IS NULL, complexity ASC, fitness DESC, id ASC",
}


def _check_result(state: CandidateState, fitness: float | None) -> None:
    """Fitness is stored exactly for complete results; NaN would silently become NULL in SQLite."""
    if state is CandidateState.COMPLETE:
        if fitness is None or fitness != fitness:
            raise ValueError("a complete candidate needs a fitness that is a number (not None or NaN)")
    elif fitness is not None:
        raise ValueError(f"only complete candidates have a fitness; this one is {state.value}")


def _stamp(path: Path) -> tuple[int, int, int]:
    """What changes when a writer rewrites the file: inode, size, modification time."""
    st = path.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns


def _check_writable(path: Path) -> None:
    """RunError before anything is opened unless the run file and its directory (where SQLite puts -wal and
    -shm) can be written: SQLite's own error ('unable to open database file', 'attempt to write a readonly
    database') names neither the cause nor the fix, and its side files were left beside a read-only file."""
    real = path.resolve()
    for target, what in ((real, "the run file"), (real.parent, "its directory")):
        if not os.access(target, os.W_OK):
            raise RunError(f"cannot write run file {path}: {what} {target} is read-only (a search or resume writes the "
                           "file and -wal/-shm files beside it); make both writable, or copy the run to a writable "
                           "directory and resume the copy")


def _reader(path: Path) -> tuple[sqlite3.Connection, tuple[int, int, int] | None]:
    """A read-only connection to ``path`` and, when no writer has it open, the file's stamp: the connection
    is then immutable (no -wal/-shm left behind) for as long as the stamp holds."""
    stamp = None if in_use(path) else _stamp(path)
    conn = connect(path, readonly=True, immutable=stamp is not None)
    conn.execute("PRAGMA foreign_keys = ON")
    return conn, stamp


class RunStore:
    """A run file opened for reading or writing. Build with :meth:`create` or :meth:`open`.

    Guarantees (the contract the engine relies on; ``tests/test_runfile_contract.py`` checks each):

    * **Atomic per result, crash safe.** Every write method is one transaction committed before it returns
      (WAL, ``synchronous=FULL``). A process killed at any moment loses at most the write in progress; a
      candidate and its result are written together or not at all.
    * **Results are immutable and writes idempotent.** A loss's result is stored once per
      ``(suite hash, key, fidelity)``; a later candidate with that key references it (an imported result
      keeps its origin). Writing a *different* result for it raises ValueError and writes nothing.
      Baseline and validation results are replaced by :meth:`set_result` (re-scoring them is idempotent).
    * **Nothing is modified on refusal.** Opening validates the file read-only first: a missing, empty,
      non-SQLite, truncated, corrupted or foreign file, or one of another schema version, raises
      :class:`~lossforge.errors.RunError` and is left byte-identical. Read-only stores never write and
      leave no -wal/-shm files behind.
    * **One writer.** A store opened with ``lease=True`` holds the run's lease (see
      :mod:`lossforge.runfile.lease`) until it is closed; a second one is refused while the holder lives,
      and every write checks the lease is still this store's.
    * **Readers beside the writer.** Any number of processes may read while one writes; each query reads
      one consistent snapshot, including the commits of a writer that started after the reader opened.
    * **Hostile content is refused, not trusted.** Every value read is checked for its type and every JSON
      document for size and depth; a bad one raises RunError naming the row and column. JSON only, never
      pickle; the non-standard ``Infinity`` token is allowed (a failed task's score is ``-inf``).
    """

    def __init__(self, path: Path, conn: sqlite3.Connection, readonly: bool) -> None:
        """Internal: use :meth:`create` or :meth:`open`, which validate the file first."""
        self.path = path
        self.readonly = readonly
        self._conn: sqlite3.Connection | None = conn
        self._lease: Lease | None = None
        self._created = False
        # set while the connection is immutable (no writer had the file open): the file's identity then
        self._immutable_stamp: tuple[int, int, int] | None = None
        # Wall-clock accounting of time spent 'running' in this session, added to the stored elapsed_s.
        self._running_since: float | None = None
        self._elapsed_base = 0.0

    # ----------------------------------------------------------------------------------------- opening
    @classmethod
    def create(cls, path: str | os.PathLike[str], config: Mapping[str, Any], *, suite_hash: str | None = None,
               lease: bool = False) -> "RunStore":
        """Create a new run file at ``path`` holding ``config`` (a JSON object), in status ``running``.

        Refuses if ``path`` exists; the file appears complete or not at all (built under a temporary name).
        ``suite_hash`` is the default suite of results and of :meth:`import_cache`. ``lease``: hold the
        run's lease until :meth:`close`. A run that fails to start can be removed with :meth:`discard`.
        """
        path = Path(path)
        create_file(path, config, suite_hash)
        try:
            store = cls.open(path, lease=lease)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        store._created = True
        store._start_clock(0.0)
        return store

    @classmethod
    def open(cls, path: str | os.PathLike[str], readonly: bool = False, lease: bool = False) -> "RunStore":
        """Open an existing run file after validating it read-only (see the guarantees).

        ``lease=True`` takes the run's lease (RunError naming the holder when a live process has it).
        """
        path = Path(path)
        validate(path)
        if not readonly:
            _check_writable(path)
        try:
            conn, stamp = _reader(path) if readonly else (connect(path, readonly=False), None)
            if not readonly:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = FULL")
                conn.execute("PRAGMA foreign_keys = ON")
        except (OSError, sqlite3.Error) as exc:
            raise RunError(f"cannot open run file {path}: {getattr(exc, 'strerror', None) or exc}") from exc
        store = cls(path, conn, readonly)
        store._immutable_stamp = stamp
        if lease:
            if readonly:
                conn.close()
                raise ValueError("a read-only store cannot hold the lease")
            held = Lease(path)
            try:
                held.acquire(conn)
            except BaseException:
                conn.close()
                raise
            store._lease = held
        return store

    def close(self) -> None:
        """Record the elapsed time if the run is running in this session, release the lease, close.
        Idempotent."""
        if self._conn is None:
            return
        try:
            if self._running_since is not None and not (self._lease and self._lease.lost):
                with self._write():
                    pass  # _write() stamps updated_at and elapsed_s
        finally:
            if self._lease is not None:
                self._lease.release(self._conn)
                self._lease = None
            self._conn.close()
            self._conn = None

    def discard(self) -> None:
        """Close, and delete the file if this store created it and no generation was recorded: a run whose
        start failed leaves nothing behind, so retrying the same name is not refused."""
        delete = self._created and self._conn is not None and self.last_generation() is None
        self._running_since = None
        self.close()
        if delete:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)

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
            if self._lease is not None:
                self._lease.check(conn)
            yield conn
            conn.execute("UPDATE run_state SET updated_at = ?, elapsed_s = COALESCE(?, elapsed_s) WHERE id = 1",
                         (now_iso(), self._elapsed()))
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
        self._follow_writer()
        conn, stamp = self._db, self._immutable_stamp
        try:
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._check_unchanged(stamp)  # a writer's checkpoint mid-query reads as 'malformed': say what it was
            raise RunError(f"cannot read run file {self.path}: {exc}") from exc
        self._check_unchanged(stamp)

    def _check_unchanged(self, stamp: tuple[int, int, int] | None) -> None:
        """RunError when an immutable read overlapped a writer's change to the file: SQLite does not lock an
        immutable file, so what was read may mix pages from before and after. The next read follows the
        writer."""
        if stamp is None:
            return
        try:
            changed = _stamp(self.path) != stamp
        except OSError:
            changed = True
        if changed:
            raise RunError(f"run file {self.path} changed while it was read (a writer started on it); read it "
                           "again")

    def _follow_writer(self) -> None:
        """Leave an immutable connection once a writer has opened the file or changed it: SQLite trusts an
        immutable file never to change, so reading on after a writer's checkpoint mixes old cached pages
        with new ones ('database disk image is malformed') or shows a stale run."""
        if self._immutable_stamp is None or self._conn is None:
            return
        try:
            if not in_use(self.path) and _stamp(self.path) == self._immutable_stamp:
                return
            conn, stamp = _reader(self.path)
        except (OSError, sqlite3.Error) as exc:
            raise RunError(f"cannot read run file {self.path}: {getattr(exc, 'strerror', None) or exc}") from exc
        self._conn.close()
        self._conn, self._immutable_stamp = conn, stamp

    def _elapsed(self) -> float | None:
        if self._running_since is None:
            return None
        return self._elapsed_base + time.monotonic() - self._running_since

    def _start_clock(self, stored_elapsed: float) -> None:
        self._elapsed_base = stored_elapsed
        self._running_since = time.monotonic()

    def _json(self, text: Any, default: Any, where: str, kind: type | None = None) -> Any:
        if text is None:
            return default
        value = rec.loads(text, f"run file {self.path}: {where}")
        if kind is not None and not isinstance(value, kind):
            raise RunError(f"run file {self.path}: {where} is not a JSON {kind.__name__}")
        return value

    # ------------------------------------------------------------------------------- run-level records
    def config(self) -> dict[str, Any]:
        """The configuration the run was created with."""
        with self._read() as conn:
            row = conn.execute("SELECT document FROM config WHERE id = 1").fetchone()
        if row is None:
            raise RunError(f"run file {self.path} has no configuration object")
        return self._json(row["document"], None, "config", dict)

    @property
    def suite_hash(self) -> str | None:
        """The suite hash given at creation, or None."""
        with self._read() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'suite_hash'").fetchone()
        return rec.want(row["value"], str, f"run file {self.path}: meta suite_hash") if row else None

    def lease_holder(self) -> LeaseRecord | None:
        """The process holding the run's lease (live or stale), or None."""
        with self._read() as conn:
            return read_lease(conn.execute("SELECT * FROM lease WHERE id = 1").fetchone(),
                              f"run file {self.path}: lease")

    def writer_gone(self, status: RunStatus) -> bool:
        """Whether a run whose status is ``status`` says ``running`` while no live process holds its lease
        (its writer was killed): it will not move on until resumed."""
        if status is not RunStatus.RUNNING:
            return False
        holder = self.lease_holder()
        return holder is None or is_stale(holder, time.time())

    def shown_status(self, status: RunStatus) -> str:
        """``status`` as the views print it: a killed writer's run says so, where it looked like a search still
        going."""
        return "running (writer gone: resume it)" if self.writer_gone(status) else status.value

    def set_status(self, status: RunStatus | str) -> None:
        """Set the run's status. ``running`` starts this session's elapsed-time clock; others stop it."""
        status = RunStatus(status)
        with self._write() as conn:  # stamps elapsed_s with the clock as it was before this call
            conn.execute("UPDATE run_state SET status = ? WHERE id = 1", (status.value,))
            stored = conn.execute("SELECT elapsed_s FROM run_state WHERE id = 1").fetchone()[0]
        if status is not RunStatus.RUNNING:
            self._running_since = None
        elif self._running_since is None:
            self._start_clock(rec.number(stored, f"run file {self.path}: run_state elapsed_s") or 0.0)

    def summary(self) -> RunSummary:
        """Status, generations done, candidates, best fitness and elapsed time of this run."""
        where = f"run file {self.path}: run_state"
        with self._read() as conn:
            state = conn.execute("SELECT status, started_at, updated_at, elapsed_s FROM run_state").fetchone()
            gens = conn.execute("SELECT COUNT(*) AS n, MAX(gen) AS last FROM generations").fetchone()
            cands = conn.execute(
                "SELECT COUNT(*) AS n, MAX(CASE WHEN r.status = 'complete' THEN r.fitness END) AS best "
                "FROM candidates c LEFT JOIN results r ON r.id = c.result_id").fetchone()
            version = conn.execute("SELECT value FROM meta WHERE key = 'lossforge_version'").fetchone()
        if state is None:
            raise RunError(f"run file {self.path} has no run_state row")
        elapsed = self._elapsed()
        return RunSummary(
            path=self.path,
            name=self.path.stem,
            status=rec.state(state["status"], f"{where} status", RunStatus),
            generations=gens["n"],
            last_generation=rec.want(gens["last"], int, "run file generations gen", nullable=True),
            candidates=cands["n"],
            best_fitness=rec.number(cands["best"], f"run file {self.path}: best fitness", nullable=True),
            elapsed_s=elapsed if elapsed is not None else (rec.number(state["elapsed_s"], f"{where} elapsed_s",
                                                                      nullable=True) or 0.0),
            started_at=rec.want(state["started_at"], str, f"{where} started_at"),
            updated_at=rec.want(state["updated_at"], str, f"{where} updated_at"),
            lossforge_version=rec.want(version["value"], str, "meta lossforge_version") if version else None,
        )

    # ----------------------------------------------------------------------------------------- results
    def _suite(self, conn: sqlite3.Connection, suite_hash: str | None) -> str:
        if suite_hash is not None:
            return rec.want(suite_hash, str, "suite_hash")
        row = conn.execute("SELECT value FROM meta WHERE key = 'suite_hash'").fetchone()
        if row is None:
            raise ValueError("this run was created without a suite hash; pass suite_hash=")
        return row["value"]

    def _put_loss_result(self, conn: sqlite3.Connection, suite_hash: str, name: str, fidelity: str,
                         state: CandidateState, fitness: float | None, reason: str | None,
                         task_scores: Mapping[str, Any] | None) -> int:
        """The id of loss ``name``'s result, inserted unless an equal one is stored (see the guarantees)."""
        if not state.is_finished():
            raise ValueError(f"only finished results are stored; this one is {state.value}")
        if task_scores is not None and not isinstance(task_scores, Mapping):
            raise ValueError(f"task_scores must be a mapping of task name to scores, got {task_scores!r}")
        document = dumps(dict(task_scores or {}), "task_scores")
        row = conn.execute("SELECT id, status, fitness FROM results WHERE kind = 'loss' AND suite_hash = ? "
                           "AND name = ? AND fidelity = ?", (suite_hash, name, fidelity)).fetchone()
        if row is not None:
            if (row["status"], row["fitness"]) != (state.value, fitness):
                raise ValueError(f"loss {name} already has a different result at fidelity {fidelity} "
                                 f"({row['status']}, fitness {row['fitness']}); results are immutable")
            return int(row["id"])
        cursor = conn.execute(
            "INSERT INTO results (kind, suite_hash, name, fidelity, status, reason, fitness, task_scores, "
            "origin, created_at) VALUES ('loss', ?, ?, ?, ?, ?, ?, ?, NULL, ?)",
            (suite_hash, name, fidelity, state.value, reason, fitness, document, now_iso()))
        return int(cursor.lastrowid)

    def record_result(self, suite_hash: str | None, key: str, status: CandidateState | str, *,
                      fitness: float | None = None, reason: str | None = None,
                      task_scores: Mapping[str, Any] | None = None,
                      fidelity: str | Mapping[str, Any] | None = None) -> int:
        """Store loss ``key``'s result at ``fidelity`` without a candidate (a racing rung); returns its id.
        Idempotent for an equal result; ValueError for a different one."""
        state = CandidateState(status)
        _check_result(state, fitness)
        with self._write() as conn:
            return self._put_loss_result(conn, self._suite(conn, suite_hash), rec.want(key, str, "key"),
                                         fidelity_label(fidelity), state,
                                         None if fitness is None else float(fitness), reason, task_scores)

    def lookup(self, suite_hash: str, key: str,
               fidelity: str | Mapping[str, Any] | None = None) -> EvaluationRecord | None:
        """The stored result of loss ``key`` on suite ``suite_hash`` at ``fidelity`` (default full), or None."""
        with self._read() as conn:
            row = conn.execute(f"{_EVALUATION_SELECT} WHERE r.kind = 'loss' AND r.suite_hash = ? AND r.name = ? "
                               "AND r.fidelity = ?", (suite_hash, key, fidelity_label(fidelity))).fetchone()
        return self._evaluation(row) if row else None

    def rungs(self, candidate_id: int) -> list[EvaluationRecord]:
        """Every stored result of a candidate's loss on its suite, one per fidelity, oldest first."""
        with self._read() as conn:
            row = conn.execute("SELECT c.key, r.suite_hash FROM candidates c LEFT JOIN results r ON "
                               "r.id = c.result_id WHERE c.id = ?", (candidate_id,)).fetchone()
            if row is None:
                raise ValueError(f"run file {self.path} has no candidate {candidate_id}")
            if row["key"] is None:
                return []
            suite_hash = row["suite_hash"] if row["suite_hash"] is not None else self._suite(conn, None)
            rows = conn.execute(f"{_EVALUATION_SELECT} WHERE r.kind = 'loss' AND r.suite_hash = ? AND r.name = ? "
                                "ORDER BY r.id", (suite_hash, row["key"])).fetchall()
        return [self._evaluation(r) for r in rows]

    def record_rung(self, generation: int, tree: Sequence[str | float], *, key: str,
                    fidelity: str | Mapping[str, Any], status: CandidateState | str, fitness: float | None,
                    reason: str | None, task_scores: Mapping[str, Any]) -> int:
        """Record loss ``key`` (prefix ``tree``) screened in ``generation`` at ``fidelity`` (a racing rung):
        its result and the screening row in one transaction; returns the result id. Durable once this returns."""
        state = CandidateState(status)
        _check_result(state, fitness)
        label = fidelity_label(fidelity)
        if label == FULL_FIDELITY:
            raise ValueError("a screening is at a lower fidelity than full; record full results as candidates")
        if isinstance(generation, bool) or int(generation) < 0:
            raise ValueError(f"generation must be >= 0, got {generation}")
        if not isinstance(tree, (list, tuple)) or not tree or not all(map(rec.is_token, tree)):
            raise ValueError(f"tree must be a non-empty list of prefix tokens (str or number), got {tree!r}")
        with self._write() as conn:
            result_id = self._put_loss_result(conn, self._suite(conn, None), rec.want(key, str, "key"), label, state,
                                              None if fitness is None else float(fitness), reason, task_scores)
            conn.execute("INSERT INTO screenings (generation, tree, result_id, created_at) VALUES (?, ?, ?, ?)",
                         (int(generation), dumps(list(tree), "tree"), result_id, now_iso()))
        return result_id

    def screenings(self) -> list[dict[str, Any]]:
        """Every screening (racing rung) in the order recorded: generation, key, tree, fidelity (a mapping),
        status, fitness, reason, task_scores."""
        with self._read() as conn:
            rows = conn.execute("SELECT s.generation, s.tree, r.name, r.fidelity, r.status, r.fitness, r.reason, "
                                "r.task_scores FROM screenings s JOIN results r ON r.id = s.result_id "
                                "ORDER BY s.id").fetchall()
        out = []
        for row in rows:
            where = f"run file {self.path}: screening of {str(row['name'])[:40]}"
            status = rec.state(row["status"], f"{where} status", CandidateState)
            tree = self._json(row["tree"], None, f"{where} tree", list)
            if not tree or not all(map(rec.is_token, tree)):
                raise RunError(f"{where}: the tree is damaged")
            out.append({
                "generation": int(rec.number(row["generation"], f"{where} generation")),
                "key": rec.want(row["name"], str, f"{where} key"), "tree": tree,
                "fidelity": self._json(row["fidelity"], None, f"{where} fidelity", dict),
                "status": status,
                "fitness": rec.number(row["fitness"], f"{where} fitness", nullable=status is not CandidateState.COMPLETE),
                "reason": rec.want(row["reason"], str, f"{where} reason", nullable=True),
                "task_scores": self._json(row["task_scores"], {}, f"{where} task_scores", dict),
            })
        return out

    def _evaluation(self, row: sqlite3.Row) -> EvaluationRecord:
        where = f"run file {self.path}: result {str(row['name'])[:40]}"
        status = rec.state(row["status"], f"{where} status", CandidateState)
        return EvaluationRecord(
            suite_hash=rec.want(row["suite_hash"], str, f"{where} suite_hash"),
            key=rec.want(row["name"], str, f"{where} name"),
            fidelity=rec.want(row["fidelity"], str, f"{where} fidelity"),
            status=status,
            reason=rec.want(row["reason"], str, f"{where} reason", nullable=True),
            fitness=rec.number(row["fitness"], f"{where} fitness", nullable=status is not CandidateState.COMPLETE),
            task_scores=self._json(row["task_scores"], {}, f"result {row['name']} task_scores", dict),
            candidate_id=row["candidate_id"],
            origin=rec.want(row["origin"], str, f"{where} origin", nullable=True),
            created_at=rec.want(row["created_at"], str, f"{where} created_at"),
        )

    def import_cache(self, other_path: str | os.PathLike[str], suite_hash: str | None = None) -> int:
        """Copy another run's loss results for ``suite_hash`` (default: this run's) into this run, at every
        fidelity, each with its origin (the run that scored it). Results this run has are kept. The other
        file is validated and only read. Returns the number of results added."""
        suite_hash = suite_hash if suite_hash is not None else self.suite_hash
        if suite_hash is None:
            raise ValueError("this run was created without a suite hash; pass suite_hash= to import_cache")
        other = Path(other_path)
        if other.exists() and other.samefile(self.path):
            raise ValueError(f"cannot import the cache of {other} into itself")
        with RunStore.open(other, readonly=True) as source, source._read() as conn:
            found = [source._evaluation(r) for r in conn.execute(
                f"{_EVALUATION_SELECT} WHERE r.kind = 'loss' AND r.suite_hash = ?", (suite_hash,))]
        origin = str(other.resolve())
        with self._write() as conn:
            added = 0
            for e in found:
                cursor = conn.execute(
                    "INSERT INTO results (kind, suite_hash, name, fidelity, status, reason, fitness, task_scores, "
                    "origin, created_at) VALUES ('loss', ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (kind, suite_hash, name, fidelity) DO NOTHING",
                    (e.suite_hash, e.key, e.fidelity, e.status.value, e.reason, e.fitness,
                     dumps(e.task_scores, "task_scores"), e.origin or origin, e.created_at))
                added += cursor.rowcount
            return added

    def set_result(self, kind: ResultKind | str, name: str, task_scores: Mapping[str, Any],
                   fidelity: str = FULL_FIDELITY) -> None:
        """Store (or replace) the raw task scores of a baseline (``kind="baseline"``, ``name`` = the reference
        loss) or of a re-scoring on other seeds than the search's (``kind="validation"``, ``name`` = a
        candidate key or ``baseline:NAME``; ``fidelity`` :data:`FULL_FIDELITY` on the validation seeds,
        :data:`CONFIRM_FIDELITY` on the confirm seeds)."""
        kind = ResultKind(kind)
        if kind is ResultKind.LOSS:
            raise ValueError("loss results are written with record_candidate or record_result")
        if not isinstance(task_scores, Mapping):
            raise ValueError(f"task_scores must be a mapping of task name to scores, got {task_scores!r}")
        document = dumps(dict(task_scores), "task_scores")
        with self._write() as conn:
            conn.execute("INSERT INTO results (kind, suite_hash, name, fidelity, task_scores, created_at) "
                         "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (kind, suite_hash, name, fidelity) DO UPDATE SET "
                         "task_scores = excluded.task_scores, created_at = excluded.created_at",
                         (kind.value, self._suite_or_blank(conn), name, fidelity_label(fidelity), document,
                          now_iso()))

    def _suite_or_blank(self, conn: sqlite3.Connection) -> str:
        row = conn.execute("SELECT value FROM meta WHERE key = 'suite_hash'").fetchone()
        return row["value"] if row else ""

    def results(self, kind: ResultKind | str, fidelity: str = FULL_FIDELITY) -> dict[str, dict[str, Any]]:
        """All baseline or validation results of this run's suite at ``fidelity``: name -> raw task scores,
        by name."""
        kind = ResultKind(kind)
        with self._read() as conn:
            rows = conn.execute("SELECT name, task_scores FROM results WHERE kind = ? AND suite_hash = ? "
                                "AND fidelity = ? ORDER BY name",
                                (kind.value, self._suite_or_blank(conn), fidelity_label(fidelity))).fetchall()
        return {rec.want(row["name"], str, f"run file {self.path}: {kind.value} name"):
                self._json(row["task_scores"], {}, f"{kind.value} {row['name']}", dict) for row in rows}

    def baselines(self) -> dict[str, dict[str, Any]]:
        """All stored baselines: reference loss name -> task scores, by name."""
        return self.results(ResultKind.BASELINE)

    def baseline(self, name: str) -> dict[str, Any] | None:
        """The task scores of reference loss ``name``, or None."""
        return self.baselines().get(name)

    def validations(self) -> dict[str, dict[str, Any]]:
        """All validation results: name -> raw task scores."""
        return self.results(ResultKind.VALIDATION)

    def confirmations(self) -> dict[str, dict[str, Any]]:
        """All re-scorings on the suite's confirm seeds: name -> raw task scores."""
        return self.results(ResultKind.VALIDATION, CONFIRM_FIDELITY)

    # -------------------------------------------------------------------------------------- candidates
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
        task_scores: Mapping[str, Any] | None = None,
        constants: Sequence[float] | None = None,
        duration_s: float | None = None,
        worker: str | None = None,
        suite_hash: str | None = None,
        fidelity: str | Mapping[str, Any] | None = None,
    ) -> int:
        """Insert a candidate and, when finished, its result (on ``suite_hash``, default the run's, at
        ``fidelity``, default full) in one transaction; returns its id. Durable once this returns.

        ``fitness`` is required for ``complete`` and forbidden otherwise. A candidate without a key gets a
        result of its own. A pending candidate has no result.
        """
        state = CandidateState(status)
        _check_result(state, fitness)
        if isinstance(generation, bool) or int(generation) < 0:
            raise ValueError(f"generation must be >= 0, got {generation}")
        if not isinstance(tree, (list, tuple)) or not tree or not all(map(rec.is_token, tree)):
            raise ValueError(f"tree must be a non-empty list of prefix tokens (str or number), got {tree!r}")
        if not state.is_finished() and (reason is not None or task_scores is not None):
            raise ValueError(f"a {state.value} candidate has no result (reason, task_scores)")
        try:
            values = {
                "generation": int(generation), "tree": dumps(list(tree), "tree"), "key": key,
                "structure_key": structure_key, "formula": formula, "latex": latex,
                "complexity": None if complexity is None else int(complexity),
                "constants": None if constants is None else dumps([float(c) for c in constants], "constants"),
                "duration_s": None if duration_s is None else float(duration_s), "worker": worker,
                "created_at": now_iso(),
            }
        except (TypeError, ValueError) as exc:
            raise ValueError(f"bad candidate field: {exc}") from None
        label = fidelity_label(fidelity)
        with self._write() as conn:
            cursor = conn.execute(f"INSERT INTO candidates ({', '.join(values)}) VALUES "
                                  f"({', '.join('?' * len(values))})", tuple(values.values()))
            candidate_id = int(cursor.lastrowid)
            if state.is_finished():
                result_id = self._put_loss_result(
                    conn, self._suite(conn, suite_hash), key if key is not None else f"candidate:{candidate_id}",
                    label, state, None if fitness is None else float(fitness), reason, task_scores)
                conn.execute("UPDATE candidates SET result_id = ? WHERE id = ?", (result_id, candidate_id))
        return candidate_id

    def _candidate(self, row: sqlite3.Row) -> CandidateRecord:
        where = f"run file {self.path}: candidate {row['id']}"
        status = rec.state(row["status"], f"{where} status", CandidateState)
        constants = self._json(row["constants"], [], f"candidate {row['id']} constants", list)
        return CandidateRecord(
            id=row["id"],
            generation=rec.want(row["generation"], int, f"{where} generation"),
            tree=rec.tree(self._json(row["tree"], None, f"candidate {row['id']} tree"), f"{where} tree"),
            status=status,
            key=rec.want(row["key"], str, f"{where} key", nullable=True),
            structure_key=rec.want(row["structure_key"], str, f"{where} structure_key", nullable=True),
            formula=rec.want(row["formula"], str, f"{where} formula", nullable=True),
            latex=rec.want(row["latex"], str, f"{where} latex", nullable=True),
            complexity=rec.want(row["complexity"], int, f"{where} complexity", nullable=True),
            reason=rec.want(row["reason"], str, f"{where} reason", nullable=True),
            fitness=rec.number(row["fitness"], f"{where} fitness", nullable=status is not CandidateState.COMPLETE),
            task_scores=rec.task_scores(self._json(row["task_scores"], {}, f"candidate {row['id']} task_scores",
                                                   dict), f"{where} task_scores"),
            constants=tuple(rec.number(c, f"{where} constants") for c in constants),
            duration_s=rec.number(row["duration_s"], f"{where} duration_s", nullable=True),
            created_at=rec.want(row["created_at"], str, f"{where} created_at"),
            worker=rec.want(row["worker"], str, f"{where} worker", nullable=True),
            fidelity=rec.want(row["fidelity"], str, f"{where} fidelity", nullable=True),
            origin=rec.want(row["origin"], str, f"{where} origin", nullable=True),
        )

    def candidate(self, candidate_id: int) -> CandidateRecord | None:
        """The candidate with this id, or None."""
        with self._read() as conn:
            row = conn.execute(f"{_CANDIDATE_SELECT} WHERE c.id = ?", (candidate_id,)).fetchone()
        return self._candidate(row) if row else None

    def candidates(self, generation: int | None = None,
                   status: CandidateState | str | None = None) -> list[CandidateRecord]:
        """Candidates in id order, optionally only those of one generation and/or one status."""
        clauses, params = [], []
        if generation is not None:
            clauses.append("c.generation = ?")
            params.append(int(generation))
        if status is not None:
            clauses.append("COALESCE(r.status, 'pending') = ?")
            params.append(CandidateState(status).value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._read() as conn:
            rows = conn.execute(f"{_CANDIDATE_SELECT} {where} ORDER BY c.id", params).fetchall()
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
        query = (
            f"SELECT * FROM ("
            f"  SELECT *, ROW_NUMBER() OVER (PARTITION BY COALESCE(key, 'id:' || id) ORDER BY {_ORDER['fitness']})"
            f"   AS rank_in_key FROM ({_CANDIDATE_SELECT} WHERE r.status = 'complete' AND r.fidelity = 'full')"
            f") WHERE rank_in_key = 1 ORDER BY {_ORDER[by]} LIMIT ?"
        )
        with self._read() as conn:
            rows = conn.execute(query, (n,)).fetchall()
        return [self._candidate(row) for row in rows]

    # ------------------------------------------------------------------------------------- generations
    def record_generation(self, gen: int, population: Sequence[Any], stats: Mapping[str, Any]) -> None:
        """Record the population (JSON data, in order) and statistics at the end of generation ``gen`` in
        one transaction. ``gen`` must be greater than every recorded generation."""
        gen = int(gen)
        if gen < 0:
            raise ValueError(f"gen must be >= 0, got {gen}")
        encoded = (dumps(list(population), "population"), dumps(dict(stats), "stats"))
        with self._write() as conn:
            last = conn.execute("SELECT MAX(gen) FROM generations").fetchone()[0]
            if last is not None and gen <= last:
                raise ValueError(f"generation {gen} cannot follow recorded generation {last}")
            conn.execute("INSERT INTO generations (gen, population, stats, finished_at) VALUES (?, ?, ?, ?)",
                         (gen, *encoded, now_iso()))

    def _generation(self, row: sqlite3.Row) -> GenerationRecord:
        where = f"generation {row['gen']}"
        return GenerationRecord(
            gen=rec.want(row["gen"], int, f"run file {self.path}: generation number"),
            population=self._json(row["population"], [], f"{where} population", list),
            stats=self._json(row["stats"], {}, f"{where} stats", dict),
            finished_at=rec.want(row["finished_at"], str, f"run file {self.path}: {where} finished_at"),
        )

    def last_generation(self) -> GenerationRecord | None:
        """The last completed generation (the state to resume from), or None before the first."""
        with self._read() as conn:
            row = conn.execute("SELECT * FROM generations ORDER BY gen DESC LIMIT 1").fetchone()
        return self._generation(row) if row else None

    def generations(self) -> list[GenerationRecord]:
        """All completed generations in order."""
        with self._read() as conn:
            rows = conn.execute("SELECT * FROM generations ORDER BY gen").fetchall()
        return [self._generation(row) for row in rows]
