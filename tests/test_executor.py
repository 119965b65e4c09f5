"""Executors: identical results everywhere, a local dask cluster, rescheduling after a worker dies, and the
per-chunk time limit. No timing assertions: limits are generous next to the chunks that must finish."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Iterator

import pytest

from lossforge.errors import ConfigError
from lossforge.executor import ChunkTimeout, DaskExecutor, JoblibExecutor, SerialExecutor, make_executor
from lossforge.expression import LossExpression
from lossforge.scoring import load_suite, score_chunk_safe

# Module-level functions, so that worker processes can unpickle them.


def nap(seconds: float, stubborn: bool = False) -> float:
    """Sleep; ``stubborn`` blocks SIGALRM first, like a long C call the worker's own timer cannot interrupt."""
    if stubborn:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    time.sleep(seconds)
    return seconds


def die_once(marker: str) -> int:
    """Kill the worker process running it the first time (a crash mid-chunk); return the pid that finished."""
    path = Path(marker)
    if not path.exists():
        path.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return os.getpid()


def environment_variable(name: str) -> str | None:
    return os.environ.get(name)


def meet(folder: str, count: int) -> int:
    """Wait (up to 300 s) until ``count`` processes have called this with the same ``folder``; return the pid.
    A chunk waiting here holds its worker, so ``count`` such chunks in flight run on ``count`` workers."""
    Path(folder, str(os.getpid())).touch()
    deadline = time.monotonic() + 300
    while len(list(Path(folder).iterdir())) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    return os.getpid()


def _every_worker_ready(executor, folder: Path, count: int = 2) -> None:
    """Every one of ``count`` workers has run a chunk of this module, so that no fresh worker's start-up
    (importing torch and this module to unpickle a chunk's function) is charged to a later time limit: a
    warm-up of short chunks can all land on one worker while the other is still starting."""
    if isinstance(executor, DaskExecutor):
        executor._client.wait_for_workers(count, timeout=300)  # one may still restart after a kill
    folder.mkdir()
    pids = _collect(executor, meet, [(str(folder), count)] * count)
    assert len(set(pids.values())) == count, pids


#: Whether the test run itself set the variable dask's nannies would otherwise set everywhere.
MALLOC_SET_BEFORE = "MALLOC_TRIM_THRESHOLD_" in os.environ


@pytest.fixture(scope="module")
def dask_executor() -> Iterator[DaskExecutor]:
    executor = make_executor("dask", jobs=2)
    try:
        yield executor
    finally:
        executor.close()


def _collect(executor, fn, items, timeout_s=None) -> dict[int, object]:
    results = dict(executor.map_unordered(fn, items, timeout_s=timeout_s))
    assert sorted(results) == list(range(len(items)))  # every chunk reports exactly once
    return results


def test_executors_give_identical_results(dask_executor: DaskExecutor, tiny_suite: str) -> None:
    suite = load_suite(tiny_suite).spec()
    tokens = [list(LossExpression.parse(text).tokens) for text in
              ("0.5*(y_pred - y_real)**2", "log(1.0 + (y_pred - y_real)**2)", "exp(30.0*y_pred) - y_real")]
    chunks = [["mse", "huber"], [tokens[0]], [tokens[1], "mae", tokens[2]]]
    items = [(chunk, suite, None, "cpu") for chunk in chunks]
    raw = {}
    for executor in (SerialExecutor(), JoblibExecutor(2), dask_executor):
        results = _collect(executor, score_chunk_safe, items)
        raw[executor.name] = json.dumps([[r.raw for r in results[i]] for i in range(len(chunks))], sort_keys=True)
    assert raw["serial"] == raw["joblib"] == raw["dask"]
    assert '"complete"' in raw["serial"]


def test_local_cluster_runs_a_small_job(dask_executor: DaskExecutor) -> None:
    assert dask_executor.n_workers == 2
    assert _collect(dask_executor, nap, [(0.01 * i,) for i in range(5)]) == {i: 0.01 * i for i in range(5)}


@pytest.mark.skipif(MALLOC_SET_BEFORE, reason="MALLOC_TRIM_THRESHOLD_ is set for the whole test run")
def test_local_cluster_does_not_slow_malloc_here_or_in_its_workers(dask_executor: DaskExecutor) -> None:
    # dask's nannies set MALLOC_TRIM_THRESHOLD_=65536 in the workers and leave it in the parent's environment,
    # for every process started later; with it, training ran 2.5x slower (glibc then mmaps each array).
    assert "MALLOC_TRIM_THRESHOLD_" not in os.environ
    workers = _collect(dask_executor, environment_variable, [("MALLOC_TRIM_THRESHOLD_",)] * 2)
    assert set(workers.values()) == {None}
    assert _collect(dask_executor, environment_variable, [("OMP_NUM_THREADS",)]) == {0: "1"}  # still set


def test_killed_dask_worker_chunk_is_rescheduled(dask_executor: DaskExecutor, tmp_path: Path) -> None:
    items = [(str(tmp_path / f"chunk{i}"),) for i in range(4)]
    for i in (0, 2, 3):  # only chunk 1 kills its worker
        Path(items[i][0]).write_text("")
    results = _collect(dask_executor, die_once, items)
    killed = int(Path(items[1][0]).read_text())
    assert results[1] != killed  # finished on another (or restarted) worker


@pytest.mark.parametrize("kind", ["serial", "joblib", "dask"])
def test_chunk_past_time_limit_yields_timeout(kind: str, dask_executor: DaskExecutor, tmp_path: Path) -> None:
    executor = {"serial": SerialExecutor, "joblib": lambda: JoblibExecutor(2)}.get(kind, lambda: dask_executor)()
    if kind != "serial":
        _every_worker_ready(executor, tmp_path / "ready")
    # dask's limit is watched from here and includes the round trip through the scheduler
    results = _collect(executor, nap, [(0.05,), (60.0,), (0.05,), (0.05,)], timeout_s=5.0)
    assert results[1] == ChunkTimeout(5.0)
    assert [results[i] for i in (0, 2, 3)] == [0.05] * 3


def test_hung_joblib_chunk_is_killed(tmp_path: Path) -> None:
    # a fast chunk is reported as timed out once it runs kill_after_s past the limit, as seen from here
    executor = JoblibExecutor(2, kill_after_s=4.0)
    _every_worker_ready(executor, tmp_path / "ready")  # so start-up is not charged to the limit
    results = _collect(executor, nap, [(0.05,), (0.05,), (0.05,), (60.0, True)], timeout_s=1.0)
    assert results[3] == ChunkTimeout(1.0)
    assert [results[i] for i in range(3)] == [0.05] * 3
    assert _collect(executor, nap, [(0.01,), (0.02,)]) == {0: 0.01, 1: 0.02}  # fresh workers took over


def test_make_executor_checks_its_options() -> None:
    assert isinstance(make_executor("joblib", 1), SerialExecutor)
    with pytest.raises(ConfigError, match="unknown executor"):
        make_executor("threads")
    with pytest.raises(ConfigError, match="dask executor only"):
        make_executor("joblib", 2, address="tcp://127.0.0.1:8786")
    with pytest.raises(ConfigError, match="positive"):
        list(SerialExecutor().map_unordered(nap, [(0.0,)], timeout_s=0))

