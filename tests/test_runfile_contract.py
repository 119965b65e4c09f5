"""The RunStore contract, in the style of Optuna's ``pytest_storages``: one suite of tests over the store's
guarantees (its class docstring), run over every way a store is obtained."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from lossforge.errors import RunError
from lossforge.runfile import SCHEMA_VERSION, CandidateState, RunStore
from lossforge.runfile.records import MAX_JSON_DEPTH

REPO = Path(__file__).resolve().parents[1]
TREE = ["add", "y_pred", "y_real"]
CONFIG = {"search": {"population": 4}, "suite": {"name": "s"}}


def _created(path: Path) -> RunStore:
    return RunStore.create(path, CONFIG, suite_hash="suite-a")


def _reopened(path: Path) -> RunStore:
    RunStore.create(path, CONFIG, suite_hash="suite-a").close()
    return RunStore.open(path)


def _leased(path: Path) -> RunStore:
    RunStore.create(path, CONFIG, suite_hash="suite-a").close()
    return RunStore.open(path, lease=True)


STORES: dict[str, Callable[[Path], RunStore]] = {"created": _created, "reopened": _reopened, "leased": _leased}


@pytest.fixture(params=list(STORES), ids=list(STORES))
def store(request, tmp_path):
    with STORES[request.param](tmp_path / "run.db") as opened:
        yield opened


def files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


# ------------------------------------------------------------------------------------- atomic per result
def test_a_candidate_and_its_result_are_written_together_or_not_at_all(store):
    store.record_candidate(0, TREE, key="k", status="complete", fitness=1.0)
    with pytest.raises(ValueError, match="different result"):
        store.record_candidate(1, TREE, key="k", status="complete", fitness=2.0)
    with pytest.raises(ValueError, match="plain JSON"):
        store.record_candidate(1, TREE, key="j", status="failed", task_scores={"t": float})
    assert [(c.key, c.fitness) for c in store.candidates()] == [("k", 1.0)]
    assert store.lookup("suite-a", "j") is None


def test_every_write_is_visible_to_a_new_reader_once_it_returns(store):
    cid = store.record_candidate(0, TREE, key="k", status="rejected", reason="constant")
    store.record_generation(0, [{"tree": TREE, "fitness": 0.0}], {"best": 0.0})
    store.set_result("baseline", "mse", {"t": {"scores": [1.0]}})
    with RunStore.open(store.path, readonly=True) as reader:
        assert reader.candidate(cid).reason == "constant"
        assert reader.last_generation().population == [{"tree": TREE, "fitness": 0.0}]
        assert reader.baselines() == {"mse": {"t": {"scores": [1.0]}}}


# ------------------------------------------------------------------------------------- idempotent writes
def test_writing_the_same_result_again_stores_it_once(store):
    a = store.record_candidate(0, TREE, key="k", status="complete", fitness=0.5)
    b = store.record_candidate(1, TREE, key="k", status="complete", fitness=0.5)
    first = store.record_result(None, "k", "complete", fitness=0.5)
    assert first == store.record_result(None, "k", "complete", fitness=0.5)
    assert store.lookup("suite-a", "k").candidate_id == a != b
    assert [c.fitness for c in store.candidates()] == [0.5, 0.5]
    store.set_result("validation", "k", {"t": 1})
    store.set_result("validation", "k", {"t": 1})
    assert store.validations() == {"k": {"t": 1}}
    raw = sqlite3.connect(f"file:{store.path}?mode=ro", uri=True)
    assert raw.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 2
    raw.close()


def test_results_at_lower_fidelity_are_rungs_of_the_same_loss(store):
    cid = store.record_candidate(0, TREE, key="k", status="complete", fitness=0.9)
    store.record_result(None, "k", "complete", fitness=0.4, fidelity={"seeds": 1, "steps": 50})
    store.record_result(None, "k", "complete", fitness=0.6, fidelity={"steps": 100, "seeds": 2})
    rungs = store.rungs(cid)
    assert [(r.fidelity, r.fitness) for r in rungs] == [
        ("full", 0.9), ('{"seeds":1,"steps":50}', 0.4), ('{"seeds":2,"steps":100}', 0.6)]
    # equal settings, any key order: the same rung
    assert store.lookup("suite-a", "k", {"steps": 50, "seeds": 1}).fitness == 0.4
    assert [r.fitness for r in store.best(5)] == [0.9]  # the ranking reads full-fidelity results only


def test_importing_twice_adds_nothing_the_second_time(store, tmp_path):
    other = tmp_path / "other.db"
    with RunStore.create(other, CONFIG, suite_hash="suite-a") as source:
        source.record_candidate(0, TREE, key="x", status="complete", fitness=0.3)
    assert store.import_cache(other) == 1
    assert store.import_cache(other) == 0
    assert store.lookup("suite-a", "x").origin == str(other.resolve())


# ------------------------------------------------------------------------------------------ crash safety
_WRITER = """
import sys
from lossforge.runfile import RunStore
store = RunStore.open(sys.argv[1], lease=sys.argv[2] == "1")
for i in range(100000):
    cid = store.record_candidate(0, ["add", "y_pred", "y_real"], key=f"k{i}", status="complete",
                                 fitness=float(i))
    print(cid, flush=True)
"""


@pytest.mark.parametrize("lease", [False, True], ids=["plain", "leased"])
def test_sigkill_loses_no_committed_result(tmp_path, lease):
    path = tmp_path / "run.db"
    _created(path).close()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), "1" if lease else "0"],
                             stdout=subprocess.PIPE, text=True, env=env)
    try:
        ids = [int(child.stdout.readline()) for _ in range(15)]
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=30)
        child.stdout.close()
    with RunStore.open(path, lease=lease) as store:  # a dead holder's lease is taken over
        stored = {c.id: c for c in store.candidates()}
        for i, cid in enumerate(ids):
            assert stored[cid].fitness == float(i)
            assert store.lookup("suite-a", f"k{i}").candidate_id == cid
        assert all(c.status is CandidateState.COMPLETE for c in stored.values())  # none half-written
        store.record_candidate(1, TREE)


# ----------------------------------------------------------------------- identification and refusal
def _foreign(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE results (id INTEGER)")
    conn.commit()
    conn.close()


def _version(version: int) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        _created(path).close()
        conn = sqlite3.connect(path)
        conn.execute(f"PRAGMA user_version = {version}")
        conn.close()
    return make


def _truncated(path: Path) -> None:
    with _created(path) as store:
        for i in range(60):
            store.record_candidate(0, TREE * 30, key=f"k{i}", formula="x" * 300)
    os.truncate(path, path.stat().st_size // 2)


REFUSED = {
    "foreign": (_foreign, "not a lossforge run file"),
    "newer": (_version(SCHEMA_VERSION + 1), "newer than version"),
    "older": (_version(SCHEMA_VERSION - 1), f"schema version {SCHEMA_VERSION - 1}, older than version"),
    "truncated": (_truncated, "corrupted"),
    "not sqlite": (lambda p: p.write_bytes(b"hello" * 100), "not an SQLite database"),
}
OPENERS = {
    "read-only": lambda p: RunStore.open(p, readonly=True),
    "read-write": lambda p: RunStore.open(p),
    "lease": lambda p: RunStore.open(p, lease=True),
    "import": lambda p: _created(p.with_name("new.db")).import_cache(p),
}


@pytest.mark.parametrize("make, message", REFUSED.values(), ids=REFUSED.keys())
@pytest.mark.parametrize("opener", OPENERS.values(), ids=OPENERS.keys())
def test_refused_files_are_left_byte_identical(tmp_path, make, message, opener):
    path = tmp_path / "run.db"
    make(path)
    before = path.read_bytes()
    with pytest.raises(RunError, match=message):
        opener(path)
    assert path.read_bytes() == before
    assert not Path(f"{path}-wal").exists() and not Path(f"{path}-shm").exists()


def test_readers_leave_no_journal_files(tmp_path):
    path = tmp_path / "run.db"
    with _created(path) as store:
        store.record_candidate(0, TREE, key="k", status="complete", fitness=1.0)
    before = files(tmp_path)
    with RunStore.open(path, readonly=True) as reader:
        reader.summary(), reader.candidates(), reader.best(3), reader.config()
    assert files(tmp_path) == before


@pytest.mark.parametrize("document, message", [
    ("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1), "nested too deeply"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('"__import__(\'os\').system(\'true\')"', "not a JSON dict"),
    ("{not json", "not valid JSON"),
])
def test_hostile_json_is_refused_with_one_line(tmp_path, document, message):
    path = tmp_path / "run.db"
    _created(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE config SET document = ?", (document,))
    conn.commit()
    conn.close()
    with RunStore.open(path, readonly=True) as store, pytest.raises(RunError, match=message) as info:
        store.config()
    assert "\n" not in str(info.value) and len(str(info.value)) < 300
