"""Resume never damages a run: the stored setup is checked like a new search's before anything is written,
endpoints come from the command line, and a search that fails to start leaves no run file behind."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import sqlite3
from pathlib import Path

import pytest

import lossforge
from lossforge import engine
from lossforge.cli import main
from lossforge.errors import ConfigError
from lossforge.runfile import RunStore


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("resume-base") / "base.db"
    lossforge.search(run=path, suite=str(Path(__file__).parent / "data" / "tiny_suite.toml"), population=4,
                     generations=1, jobs=1, executor="serial", quiet=True, validate_top=0)
    return path


def _edited(base: Path, tmp_path: Path, sql: str, *params) -> Path:
    path = tmp_path / "run.db"
    shutil.copy(base, path)
    conn = sqlite3.connect(path)
    conn.execute(sql, params)
    conn.commit()
    conn.close()
    return path


def _search_doc(path: Path) -> dict:
    with RunStore.open(path, readonly=True) as store:
        return store.config()


EDITS = {
    "tampered population": ("UPDATE generations SET population = ? WHERE gen = 1",
                            json.dumps([{"tree": ["exec", "y_pred"], "fitness": 1.0}]), "population of generation 1"),
    "text fitness in the population": ("UPDATE generations SET population = ? WHERE gen = 1",
                                       json.dumps([{"tree": ["y_pred"], "fitness": "1"}]), "no finite fitness"),
    "absurd chunk size": ("UPDATE config SET document = json_set(document, '$.search.chunk_size', ?)", 10**9,
                          "chunk_size must be between 1 and 256"),
    "absurd training steps": ("UPDATE config SET document = json_set(document, '$.suite.tasks[0].settings.steps', ?)",
                              10**9, "steps must be an integer in [1, 100000]"),
    "absurd width": ("UPDATE config SET document = json_set(document, '$.suite.tasks[0].settings.hidden', ?)",
                     10**6, "hidden must be an integer in [1, 100000]"),
    "unknown setting": ("UPDATE config SET document = json_set(document, '$.search.evil', ?)", "x",
                        "stored configuration is invalid"),
    "stored scheduler": ("UPDATE config SET document = json_set(document, '$.search.executor', 'dask', "
                         "'$.search.scheduler', ?)", "tcp://203.0.113.1:8786", "--scheduler ADDRESS"),
}


@pytest.mark.parametrize("sql, value, message", EDITS.values(), ids=EDITS.keys())
def test_a_refused_resume_changes_no_byte(base_run, tmp_path, sql, value, message):
    path = _edited(base_run, tmp_path, sql, value)
    before = path.read_bytes()
    code, _, err = _cli("resume", str(path), "--quiet")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert path.read_bytes() == before  # status untouched, no lease left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.db"]


def test_the_same_bound_refuses_a_new_search_and_a_resume(base_run, tmp_path):
    with pytest.raises(ConfigError) as new:
        engine.SearchConfig(chunk_size=10**9)
    path = _edited(base_run, tmp_path, EDITS["absurd chunk size"][0], 10**9)
    code, _, err = _cli("resume", str(path))
    assert code == 2 and str(new.value) in err


def test_a_refused_cache_from_leaves_no_run_and_a_retry_works(tmp_path, tiny_suite):
    foreign = tmp_path / "foreign.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    args = ["--runs-dir", str(tmp_path), "search", "--run", "fresh", "--suite", tiny_suite, "--population", "4",
            "--generations", "1", "--jobs", "1", "--validate-top", "0", "--quiet"]
    code, _, err = _cli(*args, "--cache-from", str(foreign))
    assert code == 2 and "not a lossforge run file" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "fresh.db").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["foreign.db"]
    code, _, err = _cli(*args)
    assert code == 0, err


def test_a_failed_start_leaves_no_run(tmp_path, tiny_suite, monkeypatch):
    def unreachable(*args, **kwargs):
        raise ConfigError("cannot reach the dask scheduler at tcp://203.0.113.1:8786")

    monkeypatch.setattr(engine, "make_executor", unreachable)
    with pytest.raises(ConfigError, match="cannot reach"):
        engine.Search.create(tmp_path / "r.db", engine.SearchConfig(suite=tiny_suite, population=4))
    assert list(tmp_path.iterdir()) == []


def test_resume_takes_the_scheduler_from_the_command_line(base_run, tmp_path, monkeypatch):
    path = _edited(base_run, tmp_path, EDITS["stored scheduler"][0], EDITS["stored scheduler"][1])
    seen = {}

    def fake(kind, jobs, **options):
        seen.update(options, kind=kind)
        raise ConfigError("stop here")

    monkeypatch.setattr(engine, "make_executor", fake)
    code, _, err = _cli("resume", str(path), "--scheduler", "tcp://127.0.0.1:8786")
    assert code == 2 and "stop here" in err
    assert seen == {"kind": "dask", "address": "tcp://127.0.0.1:8786"}  # never the stored 203.0.113.1
    with RunStore.open(path, readonly=True) as store:
        assert store.lease_holder() is None and store.summary().status.value == "finished"


def test_resuming_a_finished_run_changes_nothing(base_run, tmp_path):
    path = tmp_path / "run.db"
    shutil.copy(base_run, path)
    with RunStore.open(path, readonly=True) as store:
        before = store.summary()
        candidates = [(c.key, c.generation, c.status) for c in store.candidates()]
        best_before = [r.key for r in store.best(10)]
    code, out, err = _cli("resume", str(path))
    assert code == 0, err
    assert "already finished: nothing to continue" in out
    with RunStore.open(path, readonly=True) as store:
        after = store.summary()
        assert [(c.key, c.generation, c.status) for c in store.candidates()] == candidates
        assert store.lease_holder() is None
    # neither its status nor its clock moves: a finished run's elapsed time is what the search took
    assert (after.status, after.elapsed_s, after.updated_at) == (before.status, before.elapsed_s, before.updated_at)
    best = lossforge.resume(path, quiet=True)
    assert best and [r.key for r in best] == best_before


def test_a_run_stopped_after_tuning_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    """A run stopped between constant tuning and the confirm/validation rungs tunes nothing more on resume:
    the tuned variants (now among the best) are not tuned again, so the run ends as if never stopped."""
    settings = dict(suite=str(Path(__file__).parent / "data" / "tiny_suite.toml"), population=8, generations=2,
                    jobs=1, executor="serial", quiet=True, tune_top=3, seed=5, validate_top=2)
    lossforge.search(run=tmp_path / "whole.db", **settings)

    def stop(self):
        raise KeyboardInterrupt  # Ctrl-C (or a kill) once tuning is recorded

    with monkeypatch.context() as m:
        m.setattr(engine.Search, "confirm", stop)
        with pytest.raises(KeyboardInterrupt):
            lossforge.search(run=tmp_path / "stopped.db", **settings)
    lossforge.resume(tmp_path / "stopped.db", quiet=True)

    def tuned(path):
        with RunStore.open(path, readonly=True) as store:
            return (sorted((c.key, c.reason) for c in store.candidates() if (c.reason or "").startswith("tuned")),
                    [(r.key, r.fitness) for r in store.best(10)], store.validations())

    whole = tuned(tmp_path / "whole.db")
    assert whole[0], "tuning improved nothing: the test needs a seed where it does"
    assert tuned(tmp_path / "stopped.db") == whole
