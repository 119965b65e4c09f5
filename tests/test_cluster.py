"""A real dask cluster, started with dask's own command line: ``dask scheduler`` and two ``dask worker``
processes on 127.0.0.1. A search runs on it through ``--executor dask --scheduler ADDRESS``; one worker is
killed (``kill -9`` of its process group) while it holds a chunk and a new one joins; the result equals
a serial run of the same seed. Only the lossforge process touches the run file; workers only compute."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import lossforge
from lossforge.runfile import RunStore

DASK = shutil.which("dask", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
pytestmark = pytest.mark.skipif(DASK is None, reason="the dask command line (`dask`, from dask[distributed]) "
                                                     "is not installed")

SETTINGS = ["--population", "6", "--generations", "2", "--chunk-size", "2", "--validate-top", "0", "--seed", "3"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}


def _start(*args: str) -> subprocess.Popen:
    # own session: the nanny and its worker process are killed together, as when a machine goes away
    return subprocess.Popen([DASK, *args], env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def _worker(address: str, name: str) -> subprocess.Popen:
    return _start("worker", address, "--name", name, "--nthreads", "1", "--nworkers", "1", "--host", "127.0.0.1",
                  "--no-dashboard", "--preload", "lossforge.scoring")


def _scheduler_address(scheduler: subprocess.Popen, info: Path) -> str:
    """The address the scheduler bound (it picks a free port itself: a port picked here and handed over could
    be taken by another process in between), read from its ``--scheduler-file`` once written."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert scheduler.poll() is None, "the dask scheduler ended at start-up"
        try:
            return json.loads(info.read_text())["address"]
        except (OSError, ValueError, KeyError):  # not written yet, or half written
            time.sleep(0.1)
    raise AssertionError("the dask scheduler wrote no --scheduler-file in 300 s")


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def test_search_on_a_real_cluster_survives_losing_a_worker(tmp_path: Path, tiny_suite: str) -> None:
    from distributed import Client

    scheduler_file = tmp_path / "scheduler.json"
    procs = [_start("scheduler", "--host", "127.0.0.1", "--port", "0", "--scheduler-file", str(scheduler_file),
                    "--no-dashboard", "--no-show")]
    search = None
    try:
        address = _scheduler_address(procs[0], scheduler_file)
        workers = {"w0": _worker(address, "w0"), "w1": _worker(address, "w1")}
        procs += workers.values()
        with Client(address, timeout=300) as client:
            client.wait_for_workers(2, timeout=300)  # each imports torch (--preload)
            search = subprocess.Popen(
                [sys.executable, "-m", "lossforge.cli", "--runs-dir", str(tmp_path), "search", "--run", "cluster",
                 "--suite", tiny_suite, "--executor", "dask", "--scheduler", address, "--quiet", *SETTINGS],
                env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            victim = None
            deadline = time.monotonic() + 300
            while victim is None and time.monotonic() < deadline and search.poll() is None:
                busy = [addr for addr, tasks in client.processing().items() if tasks]
                names = {addr: info.get("name") for addr, info in client.scheduler_info()["workers"].items()}
                victim = next((names[a] for a in busy if names.get(a) in workers), None)
                time.sleep(0.05)
            assert victim is not None, "no worker ever held a chunk"
            _kill(workers[victim])  # mid-generation: its chunk is rescheduled by the scheduler
            procs.append(_worker(address, "w2"))
            code = search.wait(timeout=600)  # w2 imports torch before it helps
            assert code == 0, search.stderr.read().decode()[-3000:]
    finally:
        for proc in ([search] if search and search.poll() is None else []):
            proc.kill()
        for proc in procs:
            _kill(proc)
    lossforge.search(run=tmp_path / "serial.db", suite=tiny_suite, population=6, generations=2, chunk_size=2,
                     validate_top=0, seed=3, executor="serial", jobs=1, quiet=True)
    with RunStore.open(tmp_path / "cluster.db", readonly=True) as a, \
            RunStore.open(tmp_path / "serial.db", readonly=True) as b:
        assert a.summary().status.value == "finished"
        assert [g.population for g in a.generations()] == [g.population for g in b.generations()]
        assert [(r.key, r.fitness) for r in a.best(10)] == [(r.key, r.fitness) for r in b.best(10)]
        assert sorted(c.key for c in a.candidates()) == sorted(c.key for c in b.candidates())
