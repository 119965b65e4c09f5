"""Workers die with their parent: after ``kill -9`` of a search, the worker processes it started (loky's,
and a LocalCluster's) exit promptly instead of training on for minutes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lossforge.errors import RunError
from lossforge.runfile import RunStore

psutil = pytest.importorskip("psutil")

#: How long the workers of a killed search may take to exit (their watchdog polls twice a second).
GRACE_S = 20.0


def _alive(procs: list) -> list:
    out = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc)
        except psutil.NoSuchProcess:
            pass
    return out


def _scored(run: Path) -> bool:
    """Whether the run file holds a loss trained by a worker: the workers are past their start-up, at work."""
    if not run.exists():
        return False
    try:
        with RunStore.open(run, readonly=True) as store:
            return any(c.duration_s and c.status.value in ("complete", "failed") for c in store.candidates())
    except RunError:  # the file is being created
        return False


def _workers(parent: "psutil.Process", marker: str) -> list:
    try:
        children = parent.children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    found = []
    for child in children:
        try:
            if marker in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:
            pass
    return found


@pytest.mark.parametrize("executor, marker", [(["--jobs", "2", "--executor", "joblib"], "popen_loky_posix"),
                                              (["--dask-workers", "2"], "spawn_main")])
def test_kill_9_of_a_search_ends_its_workers(tmp_path: Path, tiny_suite: str, executor: list[str],
                                             marker: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lossforge.cli", "--runs-dir", str(tmp_path), "search", "--run", "orphans",
         "--suite", tiny_suite, "--population", "8", "--generations", "1000", "--chunk-size", "2", "--quiet",
         *executor], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    parent = psutil.Process(proc.pid)
    workers: list = []
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            workers = _workers(parent, marker)
            if len(workers) >= 2:
                break
            time.sleep(0.2)
        assert len(workers) >= 2, f"no workers seen; stderr: {proc.stderr.read().decode()[-2000:] if proc.poll() is not None else ''}"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None and not _scored(tmp_path / "orphans.db"):
            time.sleep(0.2)  # let them take work
        assert proc.poll() is None and _scored(tmp_path / "orphans.db"), "the workers scored nothing"
        everything = parent.children(recursive=True)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        gone_by = time.monotonic() + GRACE_S
        while time.monotonic() < gone_by and _alive(workers):
            time.sleep(0.2)
        assert not _alive(workers), f"workers still running {GRACE_S:.0f} s after the parent was killed"
        while time.monotonic() < gone_by and _alive(everything):
            time.sleep(0.2)
        assert not _alive(everything), [p.cmdline() for p in _alive(everything)]
    finally:
        for leftover in _alive(_workers(parent, "")) + _alive(workers):
            leftover.kill()
        if proc.poll() is None:
            proc.kill()
