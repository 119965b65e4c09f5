"""Run leases: one writer per run, refused with one line naming the holder, stale leases taken over; tested
in-process and with real ``lossforge resume`` processes."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from lossforge.errors import RunError
from lossforge.runfile import RunStore
from lossforge.runfile import lease as lease_module

REPO = Path(__file__).resolve().parents[1]
TREE = ["add", "y_pred", "y_real"]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
       "OMP_NUM_THREADS": "1"}


def _run(path: Path) -> Path:
    RunStore.create(path, {"x": 1}, suite_hash="s").close()
    return path


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    path = _run(tmp_path / "run.db")
    with RunStore.open(path, lease=True) as holder:
        before = path.read_bytes()
        with pytest.raises(RunError, match=rf"in use by host \S+ pid {os.getpid()} \(heartbeat"):
            RunStore.open(path, lease=True)
        assert path.read_bytes() == before  # a refused attempt writes nothing
        with RunStore.open(path, readonly=True) as reader:  # readers are never refused
            assert reader.lease_holder().pid == os.getpid()
        holder.record_candidate(0, TREE)
    with RunStore.open(path, lease=True) as again:  # released on close
        assert again.lease_holder().token == again._lease.token
    with RunStore.open(path, readonly=True) as reader:
        assert reader.lease_holder() is None


def test_a_dead_holders_lease_is_taken_over(tmp_path):
    path = _run(tmp_path / "run.db")
    with RunStore.open(path, lease=True):
        pass
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO lease VALUES (1, ?, ?, 'x', 'dead', ?, ?)",
                 (os.uname().nodename, _dead_pid(), time.time(), time.time()))
    conn.commit()
    conn.close()
    with RunStore.open(path, lease=True) as store:
        assert store.lease_holder().pid == os.getpid()


def test_a_silent_holder_on_another_host_is_taken_over_after_the_timeout(tmp_path, monkeypatch):
    path = _run(tmp_path / "run.db")
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO lease VALUES (1, 'elsewhere', 1, 'x', 'far', ?, ?)", (time.time(), time.time()))
    conn.commit()
    with pytest.raises(RunError, match="in use by host elsewhere pid 1"):
        RunStore.open(path, lease=True)
    old = time.time() - lease_module.STALE_AFTER_S - 1
    conn.execute("UPDATE lease SET heartbeat_at = ?", (old,))
    conn.commit()
    conn.close()
    with RunStore.open(path, lease=True) as store:
        assert store.lease_holder().host != "elsewhere"


def test_the_heartbeat_moves_and_a_lost_lease_stops_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(lease_module, "HEARTBEAT_S", 0.05)
    path = _run(tmp_path / "run.db")
    with RunStore.open(path, lease=True) as store:
        first = store.lease_holder().heartbeat_at
        deadline = time.time() + 30
        while store.lease_holder().heartbeat_at == first and time.time() < deadline:
            time.sleep(0.05)
        assert store.lease_holder().heartbeat_at > first
        conn = sqlite3.connect(path, timeout=30)
        conn.execute("UPDATE lease SET token = 'someone else'")  # as a process that judged us dead would
        conn.commit()
        conn.close()
        with pytest.raises(RunError, match="taken over"):
            store.record_candidate(0, TREE)
        assert store.candidates() == []


# ------------------------------------------------------------------------------------ real processes
def _cli(*args: str, runs_dir: Path, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lossforge.cli", "--runs-dir", str(runs_dir), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV, **kwargs)


def _wait(predicate, proc: subprocess.Popen, what: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"process ended before {what}: {proc.stderr.read()}")
        try:
            if predicate():
                return
        except RunError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _holder(path: Path) -> int | None:
    with RunStore.open(path, readonly=True) as store:
        held = store.lease_holder()
    return held.pid if held else None


def _last_gen(path: Path) -> int:
    with RunStore.open(path, readonly=True) as store:
        last = store.last_generation()
    return -1 if last is None else last.gen


def _status(path: Path) -> str:
    with RunStore.open(path, readonly=True) as store:
        return store.summary().status.value


def _shown(path: Path) -> str:
    with RunStore.open(path, readonly=True) as store:
        return store.shown_status(store.summary().status)


def test_two_resumes_at_once_one_is_refused_and_kill_9_is_taken_over(tmp_path, tiny_suite, capsys):
    run = tmp_path / "r.db"
    search = _cli("search", "--run", "r", "--suite", tiny_suite, "--population", "6", "--generations", "1000",
                  "--jobs", "1", "--chunk-size", "2", "--validate-top", "0", runs_dir=tmp_path)
    _wait(lambda: run.exists() and _last_gen(run) >= 0, search, "generation 0")
    search.send_signal(signal.SIGINT)
    assert search.wait(timeout=120) == 130

    first = _cli("resume", "r", runs_dir=tmp_path)
    _wait(lambda: _holder(run) == first.pid, first, "the first resume's lease")
    second = _cli("resume", "r", runs_dir=tmp_path)
    _, err = second.communicate(timeout=300)
    assert second.returncode == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and f"pid {first.pid}" in err and "in use by" in err

    # the lease is taken before the run is loaded; 'running' is written after, which can outlast the refusal
    _wait(lambda: _status(run) == "running", first, "the first resume's status 'running'")
    assert _shown(run) == "running"  # a live writer
    from lossforge.results import open_run

    assert open_run(run).to_dict()["writer_gone"] is False
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
    first.stderr.close()
    reached = _last_gen(run)  # after the kill: the first resume may have ended another generation meanwhile
    # the killed writer left 'running' in the file: the views say no process is behind it
    assert _shown(run) == "running (writer gone: resume it)"
    # show --json kept "running" alone, and a script waiting for the status to change waited for ever
    doc = open_run(run).to_dict()
    assert (doc["status"], doc["writer_gone"]) == ("running", True)
    from lossforge.cli import main

    assert main(["--runs-dir", str(tmp_path), "runs"]) == 0
    assert "running (writer gone: resume it)" in capsys.readouterr().out
    third = _cli("resume", "r", runs_dir=tmp_path)
    _wait(lambda: _holder(run) == third.pid and _last_gen(run) > reached, third, "the take-over's progress")
    third.send_signal(signal.SIGINT)
    _, err = third.communicate(timeout=120)
    assert third.returncode == 130, err

    with RunStore.open(run, readonly=True) as store:
        keys = Counter(c.key for c in store.candidates())
        gens = [g.gen for g in store.generations()]
        assert store.lease_holder() is None
    assert keys and max(keys.values()) == 1  # no loss recorded twice, whoever wrote it
    assert gens == list(range(len(gens)))


def test_ctrl_c_while_a_resume_opens_the_run_is_one_line_and_releases_the_lease(tmp_path, tiny_suite, capsys,
                                                                               monkeypatch):
    """A Ctrl-C before the first new generation (the run still loading) was a traceback and exit -2."""
    from lossforge import engine
    from lossforge.cli import main

    base = ["--runs-dir", str(tmp_path)]
    assert main([*base, "search", "--run", "r", "--suite", tiny_suite, "--population", "4", "--generations", "1",
                 "--jobs", "1", "--validate-top", "0", "--quiet"]) == 0
    capsys.readouterr()

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(engine.Search, "__init__", interrupted)
        assert main([*base, "resume", "r"]) == 130
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["lossforge: interrupted"]
    assert _holder(tmp_path / "r.db") is None  # released: the next resume is not refused
    assert main([*base, "resume", "r", "--quiet"]) == 0
