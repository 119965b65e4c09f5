"""Run file (lossforge.runfile): round-trips of every table, crash safety, validation of bad files, cache, listing, names."""

from __future__ import annotations

import logging
import math
import os
import random
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from lossforge.errors import RunError
from lossforge.runfile import (
    APPLICATION_ID,
    SCHEMA_VERSION,
    CandidateState,
    RunStatus,
    RunStore,
    list_runs,
    resolve_run_path,
)

REPO = Path(__file__).resolve().parents[1]
TREE = ["add", "y_pred", "mul", 1.5, "y_real"]
CONFIG = {"search": {"population": 8, "generations": 3}, "space": "basic", "seeds": [0, 1], "version": "0.1.0"}


def make_run(path: Path, **kwargs) -> RunStore:
    return RunStore.create(path, CONFIG, suite_hash=kwargs.pop("suite_hash", "suite-a"), **kwargs)


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file in ``directory`` with its bytes: a rejected open must change nothing, add nothing."""
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


# --------------------------------------------------------------------------------------------- creation
def test_create_identifies_the_file_and_round_trips_config(tmp_path):
    path = tmp_path / "nested" / "dir" / "run.db"
    with make_run(path) as store:
        assert store.config() == CONFIG
        assert store.suite_hash == "suite-a"
        assert store.summary().status is RunStatus.RUNNING
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert dict(raw.execute("SELECT key, value FROM meta"))["format"] == "lossforge-run"
    raw.close()
    assert [p.name for p in path.parent.iterdir()] == ["run.db"]  # no temporary file left behind
    with RunStore.open(path, readonly=True) as store:
        assert store.config() == CONFIG
    assert [p.name for p in path.parent.iterdir()] == ["run.db"]  # a reader leaves no -wal/-shm


def test_create_refuses_an_existing_file_and_leaves_it_identical(tmp_path):
    path = tmp_path / "run.db"
    with make_run(path) as store:
        store.record_candidate(0, TREE)
    before = snapshot(tmp_path)
    with pytest.raises(RunError, match="lossforge resume"):
        RunStore.create(path, {"other": True})
    assert snapshot(tmp_path) == before
    path2 = tmp_path / "junk.db"
    path2.write_bytes(b"not mine")
    with pytest.raises(RunError, match="already exists"):
        RunStore.create(path2, CONFIG)
    assert path2.read_bytes() == b"not mine"


def test_create_refuses_a_stale_wal_left_by_a_removed_run(tmp_path):
    """A killed writer leaves ``-wal``/``-shm``; a user who then deletes the run file and starts a run of the
    same name must not get the dead run's pages: SQLite applies a WAL it finds beside a new file to it."""
    path = tmp_path / "run.db"
    store = make_run(path)
    for gen in range(3):
        store.record_candidate(gen, TREE)
    stale = {suffix: Path(f"{path}{suffix}").read_bytes() for suffix in ("-wal", "-shm")}  # as at a kill -9
    store.close()
    path.unlink()
    for suffix, data in stale.items():
        Path(f"{path}{suffix}").write_bytes(data)
    assert stale["-wal"], "the writer left no WAL to replay: the test needs one"
    before = snapshot(tmp_path)
    with pytest.raises(RunError, match=r"run\.db-wal"):
        RunStore.create(path, {"other": True})
    assert snapshot(tmp_path) == before  # nothing removed, nothing created
    Path(f"{path}-wal").write_bytes(b"")  # an empty journal holds nothing to apply
    with RunStore.create(path, {"other": True}) as store:
        assert store.config() == {"other": True} and store.candidates() == []


def test_create_checkpoints_before_linking_and_leaves_no_side_files(tmp_path, monkeypatch):
    """The checkpoint of the builder's last close can fail unseen (a disk with room for the WAL but not for
    the pages: ``create`` then linked a file without its tables into place, said it was corrupted and left
    ``.NAME.creating-wal``/``-shm`` behind). Here another connection keeps that close from checkpointing."""
    from lossforge.runfile import format as runformat

    real, held = runformat.connect, []

    class Builder:  # the builder's connection, with a reader reading while it closes: close skips the checkpoint
        def __init__(self, path, **kw):
            self.path, self.conn = path, real(path, **kw)

        def __getattr__(self, name):
            return getattr(self.conn, name)

        def close(self):
            reader = real(self.path, readonly=True)
            reader.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            self.conn.close()
            reader.close()
            held.append(reader)

    def connect(path, **kw):
        return Builder(path, **kw) if path.name.endswith(".creating") else real(path, **kw)

    monkeypatch.setattr(runformat, "connect", connect)
    path = tmp_path / "run.db"
    with RunStore.create(path, CONFIG, suite_hash="suite-a") as store:
        assert store.config() == CONFIG
    assert held and sorted(p.name for p in tmp_path.iterdir()) == ["run.db"]


def test_create_rejects_config_that_is_not_json(tmp_path):
    with pytest.raises(ValueError, match="plain JSON"):
        RunStore.create(tmp_path / "run.db", {"fn": object()})
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------- candidates
def test_candidate_round_trips_every_field(tmp_path):
    task_scores = {"regression": {"score": -0.5, "normalized": 1.2, "seeds": [-0.4, -0.6],
                                  "metrics": {"mse": 0.5}},
                   "noisy": {"score": -math.inf, "normalized": 0.0, "seeds": [-math.inf], "metrics": {}}}
    with make_run(tmp_path / "run.db") as store:
        pid = store.record_candidate(2, TREE, key="k0")
        pending = store.candidate(pid)
        assert pending.status is CandidateState.PENDING and pending.fitness is None
        assert pending.task_scores == {} and pending.fidelity is None
        cid = store.record_candidate(2, TREE, key="k1", structure_key="s1", formula="y_pred + y_real",
                                     latex=r"y_{pred} + y_{real}", complexity=3, constants=[1.5],
                                     worker="host:1", status="complete", fitness=0.75, task_scores=task_scores,
                                     duration_s=1.25)
        rec = store.candidate(cid)
    assert rec.id == cid and rec.generation == 2 and rec.tree == tuple(TREE)
    assert (rec.key, rec.structure_key, rec.formula, rec.latex) == ("k1", "s1", "y_pred + y_real",
                                                                    r"y_{pred} + y_{real}")
    assert rec.complexity == 3 and rec.constants == (1.5,) and rec.worker == "host:1"
    assert rec.status is CandidateState.COMPLETE and rec.fitness == 0.75 and rec.fidelity == "full"
    assert rec.task_scores == task_scores and rec.duration_s == 1.25 and rec.reason is None
    assert rec.origin is None and rec.created_at


def test_candidate_filters_and_null_columns(tmp_path):
    with make_run(tmp_path / "run.db") as store:
        a = store.record_candidate(0, TREE)
        b = store.record_candidate(0, TREE, status="rejected", reason="constant loss")
        c = store.record_candidate(1, TREE, status="failed", reason="RuntimeError: boom")
        assert [r.id for r in store.candidates()] == [a, b, c]
        assert [r.id for r in store.candidates(generation=0)] == [a, b]
        assert [r.id for r in store.candidates(status=CandidateState.FAILED)] == [c]
        assert [r.id for r in store.candidates(generation=0, status="rejected")] == [b]
        assert store.candidate(b).reason == "constant loss"
        assert store.candidate(999) is None
        # Rows written by other tools may leave JSON columns NULL: they read as empty values.
        raw = sqlite3.connect(store.path)
        with raw:
            raw.execute("UPDATE candidates SET constants = NULL")
        raw.close()
        rec = store.candidate(a)
        assert (rec.task_scores, rec.constants, rec.key, rec.complexity) == ({}, (), None, None)


def test_fitness_rules_and_finished_candidates_are_immutable(tmp_path):
    with make_run(tmp_path / "run.db") as store:
        with pytest.raises(ValueError, match="needs a fitness"):
            store.record_candidate(0, TREE, status="complete")
        with pytest.raises(ValueError, match="needs a fitness"):
            store.record_candidate(0, TREE, status="complete", fitness=math.nan)
        with pytest.raises(ValueError, match="only complete"):
            store.record_candidate(0, TREE, status="rejected", fitness=-1.0)
        for bad_tree in ["add(y_pred, y_real)", [], ["add", None], ["neg", True]]:
            with pytest.raises(ValueError, match="prefix tokens"):
                store.record_candidate(0, bad_tree)
        with pytest.raises(ValueError, match="plain JSON"):
            store.record_candidate(0, TREE, key="j", status="failed", task_scores={"t": {1, 2}})
        cid = store.record_candidate(0, TREE, key="k", status="complete", fitness=1.0)
        with pytest.raises(ValueError, match="already has a different result"):
            store.record_candidate(0, TREE, key="k", status="failed", reason="late")
        with pytest.raises(ValueError, match="no result"):
            store.record_candidate(0, TREE, key="p", reason="a pending candidate has none")
        with pytest.raises(ValueError, match="no candidate 999"):
            store.rungs(999)
        assert len(store.candidates()) == 1  # nothing half-written by the refused calls
        assert store.candidate(cid).fitness == 1.0


def test_best_orders_by_fitness_with_distinct_keys_and_deterministic_ties(tmp_path):
    with make_run(tmp_path / "run.db") as store:
        def add(key, fitness, complexity, status="complete"):
            return store.record_candidate(0, TREE, key=key, complexity=complexity, status=status,
                                          fitness=fitness if status == "complete" else None)

        a1 = add("a", 0.9, 5)
        a3 = add("a", 0.9, 5)     # same-result duplicate: the earlier id a1 represents key a
        b = add("b", 0.9, 3)      # ties a on fitness, simpler, so first
        c = add("c", 0.7, 1)
        add("d", None, 1, status="rejected")
        nokey = store.record_candidate(0, TREE, status="complete", fitness=0.1)
        assert [r.id for r in store.best(10)] == [b, a1, c, nokey]
        assert [r.id for r in store.best(2)] == [b, a1]
        assert [r.id for r in store.best(3, by="complexity")] == [c, b, a1]
        assert store.best(0) == [] and a3 != a1
        with pytest.raises(ValueError, match="must be one of"):
            store.best(1, by="speed")


# ------------------------------------------------------------------------------ generations, baselines
def test_generations_round_trip_and_must_increase(tmp_path):
    with make_run(tmp_path / "run.db") as store:
        assert store.last_generation() is None and store.generations() == []
        store.record_generation(0, [TREE, ["neg", "y_pred"]],
                                {"best": 0.5, "median": 0.1, "evaluations": 8, "cache_hits": 0})
        store.record_generation(1, [TREE], {"best": 0.6})
        with pytest.raises(ValueError, match="cannot follow"):
            store.record_generation(1, [], {})
        gens = store.generations()
    assert [g.gen for g in gens] == [0, 1]
    first = gens[0]
    assert first.population == [TREE, ["neg", "y_pred"]]
    assert first.stats["evaluations"] == 8 and first.finished_at
    assert gens[1].population == [TREE] and gens[1].stats == {"best": 0.6}


def test_last_generation_is_the_resume_point_after_reopen(tmp_path):
    path = tmp_path / "run.db"
    with make_run(path) as store:
        for gen in range(3):
            store.record_generation(gen, [[f"tok{gen}"]], {"best": gen})
        store.set_status(RunStatus.INTERRUPTED)
    with RunStore.open(path) as store:
        last = store.last_generation()
        assert (last.gen, last.population, last.stats) == (2, [["tok2"]], {"best": 2})


def test_baselines_round_trip(tmp_path):
    with make_run(tmp_path / "run.db") as store:
        store.set_result("baseline", "mse", {"regression": {"score": -0.3}})
        store.set_result("baseline", "ce", {"noisy": {"score": 0.8}})
        store.set_result("baseline", "mse", {"regression": {"score": -0.2}})  # replaces
        store.set_result("validation", "baseline:mse", {"regression": {"score": -0.1}})
        assert store.baselines() == {"ce": {"noisy": {"score": 0.8}}, "mse": {"regression": {"score": -0.2}}}
        assert store.baseline("mse") == {"regression": {"score": -0.2}}
        assert store.baseline("huber") is None
        assert store.validations() == {"baseline:mse": {"regression": {"score": -0.1}}}
        with pytest.raises(ValueError, match="record_candidate"):
            store.set_result("loss", "k", {})


def test_run_state_and_summary(tmp_path):
    path = tmp_path / "run.db"
    with make_run(path) as store:
        store.record_candidate(0, TREE, status="complete", fitness=0.4)
        store.record_candidate(0, TREE, status="complete", fitness=0.6)
        store.record_generation(0, [], {})
        store.set_status("finished")
        summary = store.summary()
    assert summary.status is RunStatus.FINISHED and summary.name == "run"
    assert (summary.generations, summary.last_generation, summary.candidates) == (1, 0, 2)
    assert summary.best_fitness == 0.6 and summary.elapsed_s > 0
    with RunStore.open(path, readonly=True) as store:
        assert store.summary().elapsed_s == summary.elapsed_s  # the clock stopped at 'finished'
        with pytest.raises(RunError, match="read-only"):
            store.set_status("running")


# ------------------------------------------------------------------------------------- evaluation cache
def test_cache_lookup_and_import_across_runs(tmp_path):
    source = tmp_path / "a.db"
    with make_run(source, suite_hash="suite-a") as store:
        cid = store.record_candidate(0, TREE, key="k1", status="complete", fitness=0.5,
                                     task_scores={"t": {"score": 1.0}}, suite_hash="suite-a")
        store.record_candidate(0, TREE, key="k2", status="rejected", reason="constant", suite_hash="suite-a")
        store.record_candidate(0, TREE, key="k3", status="complete", fitness=0.1, suite_hash="suite-other")
        store.record_result("suite-a", "k1", "complete", fitness=0.3, fidelity={"seeds": 1})
        hit = store.lookup("suite-a", "k1")
        assert (hit.status, hit.fitness, hit.candidate_id, hit.origin, hit.fidelity) == (
            CandidateState.COMPLETE, 0.5, cid, None, "full")
        assert hit.task_scores == {"t": {"score": 1.0}}
        assert store.lookup("suite-a", "k2").reason == "constant"
        assert store.lookup("suite-b", "k1") is None and store.lookup("suite-a", "zz") is None
        with pytest.raises(ValueError, match="only finished"):
            store.record_result("suite-a", "k4", "pending")
    source_bytes = source.read_bytes()

    with make_run(tmp_path / "same.db", suite_hash="suite-a") as store:
        store.record_candidate(0, TREE, key="k2", status="complete", fitness=0.9, suite_hash="suite-a")
        assert store.import_cache(source) == 2  # k1 at both fidelities added; the local k2 is kept
        imported = store.lookup("suite-a", "k1")
        assert imported.fitness == 0.5 and imported.candidate_id is None
        assert imported.origin == str(source.resolve())
        assert store.lookup("suite-a", "k1", {"seeds": 1}).fitness == 0.3
        # a candidate that reuses the imported result references it: its provenance is kept
        reuse = store.record_candidate(0, TREE, key="k1", status="complete", fitness=0.5, suite_hash="suite-a",
                                       worker=f"cache:{source}")
        assert store.candidate(reuse).origin == str(source.resolve())
        assert store.lookup("suite-a", "k1").origin == str(source.resolve())
        assert store.lookup("suite-a", "k1").candidate_id == reuse
        assert store.lookup("suite-a", "k2").fitness == 0.9
        assert store.lookup("suite-other", "k3") is None
        assert store.import_cache(source) == 0
        with pytest.raises(ValueError, match="into itself"):
            store.import_cache(tmp_path / "same.db")
    with make_run(tmp_path / "other.db", suite_hash="suite-b") as store:
        assert store.import_cache(source) == 0
        assert store.lookup("suite-a", "k1") is None and store.lookup("suite-b", "k1") is None
    assert source.read_bytes() == source_bytes  # the other run is only read


# ------------------------------------------------------------------------------------------ crash safety
_WRITER = """
import sys
from lossforge.runfile import RunStore
store = RunStore.open(sys.argv[1])
for i in range(100000):
    cid = store.record_candidate(0, ["add", "y_pred", "y_real"], key=f"k{i}", status="complete",
                                 fitness=float(i), suite_hash="suite-a")
    print(cid, flush=True)
"""


def test_committed_candidates_survive_sigkill(tmp_path):
    path = tmp_path / "run.db"
    make_run(path).close()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True,
                             env=env)
    try:
        ids = [int(child.stdout.readline()) for _ in range(20)]
        os.kill(child.pid, signal.SIGKILL)  # mid-way through the next write
    finally:
        child.kill()
        child.wait(timeout=30)
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    assert Path(f"{path}-wal").exists()  # the commits are recovered from the WAL, not a clean close
    with RunStore.open(path, readonly=True) as reader:  # a reader first, as `lossforge show` would be
        assert {rec.id for rec in reader.candidates()} >= set(ids)
    with RunStore.open(path) as store:
        stored = {rec.id: rec for rec in store.candidates()}
        for i, cid in enumerate(ids):
            assert stored[cid].fitness == float(i) and stored[cid].key == f"k{i}"
            assert store.lookup("suite-a", f"k{i}").candidate_id == cid
        store.record_candidate(1, TREE)  # and the run goes on


def test_reader_sees_commits_while_a_writer_is_open(tmp_path):
    path = tmp_path / "run.db"
    with make_run(path) as writer, RunStore.open(path, readonly=True) as reader:
        cid = writer.record_candidate(0, TREE, status="complete", fitness=1.0)
        assert reader.candidate(cid).fitness == 1.0
        with pytest.raises(RunError, match="read-only"):
            reader.record_candidate(0, TREE)


# ------------------------------------------------------------------------------------ rejected files
def _foreign(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE candidates (id INTEGER)")
    conn.commit()
    conn.close()


def _with_version(version: int):
    def make(path: Path) -> None:
        make_run(path).close()
        conn = sqlite3.connect(path)
        conn.execute(f"PRAGMA user_version = {version}")
        conn.close()
    return make


def _truncated(path: Path) -> None:
    with make_run(path) as store:
        for i in range(50):
            store.record_candidate(0, TREE * 20, key=f"k{i}", formula="x" * 200)
    os.truncate(path, path.stat().st_size // 2)


def _garbled(path: Path) -> None:
    make_run(path).close()
    data = bytearray(path.read_bytes())
    data[4096:8192] = random.Random(0).randbytes(4096)  # page 2: a table's b-tree page
    path.write_bytes(bytes(data))


BAD_FILES = {
    "foreign SQLite file": (_foreign, "not a lossforge run file"),
    "newer schema": (_with_version(SCHEMA_VERSION + 1), f"newer than version {SCHEMA_VERSION}.*upgrade lossforge"),
    "older schema": (_with_version(SCHEMA_VERSION - 1), f"older than version {SCHEMA_VERSION}"),
    "truncated file": (_truncated, "corrupted"),
    "garbled page": (_garbled, "corrupted"),
    "random bytes": (lambda p: p.write_bytes(random.Random(1).randbytes(5000)), "not an SQLite database"),
    "short SQLite header": (lambda p: p.write_bytes(b"SQLite format 3\x00" + b"\x00" * 20), "truncated"),
    "empty file": (lambda p: p.write_bytes(b""), "empty"),
}


@pytest.mark.parametrize("make, message", BAD_FILES.values(), ids=BAD_FILES.keys())
@pytest.mark.parametrize("readonly", [False, True])
def test_bad_files_are_rejected_and_left_unchanged(tmp_path, make, message, readonly):
    path = tmp_path / "run.db"
    make(path)
    before = snapshot(tmp_path)
    with pytest.raises(RunError, match=message) as info:
        RunStore.open(path, readonly=readonly)
    assert str(path) in str(info.value)
    assert snapshot(tmp_path) == before


def test_missing_file_and_directory_are_rejected(tmp_path):
    with pytest.raises(RunError, match=r"no run at .*lossforge runs"):
        RunStore.open(tmp_path / "nope.db")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RunError, match="not a regular file"):
        RunStore.open(tmp_path)


# ---------------------------------------------------------------------------------- listing and names
def test_list_runs_skips_and_reports_unreadable_files(tmp_path, caplog):
    with make_run(tmp_path / "b.db") as store:
        store.record_candidate(0, TREE, status="complete", fitness=0.3)
    make_run(tmp_path / "a.db").close()
    (tmp_path / "broken.db").write_bytes(b"garbage" * 100)
    (tmp_path / "notes.txt").write_text("not a run")
    skipped = []
    runs = list_runs(tmp_path, on_skip=lambda path, error: skipped.append((path.name, str(error))))
    assert [r.name for r in runs] == ["a", "b"]
    assert runs[1].best_fitness == 0.3 and runs[0].best_fitness is None
    assert skipped == [("broken.db", f"{tmp_path / 'broken.db'} is not a lossforge run file (not an SQLite "
                                     "database)")]
    with caplog.at_level(logging.WARNING, logger="lossforge.runfile"):
        assert len(list_runs(tmp_path)) == 2
    assert "broken.db" in caplog.text
    assert list_runs(tmp_path / "missing") == []


def test_resolve_run_path(tmp_path):
    assert resolve_run_path("exp-1.v2_a", runs_dir=tmp_path) == tmp_path / "exp-1.v2_a.db"
    assert resolve_run_path("out/my run.db") == Path("out/my run.db")
    assert resolve_run_path("elsewhere.db") == Path("elsewhere.db")
    existing = tmp_path / "plain"
    existing.write_bytes(b"")
    assert resolve_run_path(existing) == existing
    for bad in ["my run", "-rf", ".hidden", "..", "a:b", ""]:
        with pytest.raises(RunError, match="letters, digits"):
            resolve_run_path(bad)


def test_paths_with_uri_characters_work(tmp_path):
    path = tmp_path / "odd dir?#%" / "run.db"
    with make_run(path) as store:
        store.record_candidate(0, TREE)
    with RunStore.open(path, readonly=True) as store:
        assert len(store.candidates()) == 1
