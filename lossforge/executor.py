"""Executors: where chunks of candidates are scored. The one seam where parallelism plugs in.

Every executor offers ``map_unordered(fn, items, timeout_s=None)`` yielding ``(index, result)`` as results
arrive, so the search records each finished chunk at once (a crash loses nothing already scored). Results
never depend on the executor: chunks are formed before dispatch, independent of the number of workers.

* ``serial``: in-process, for debugging and tests.
* ``joblib`` (default): loky worker processes, reused across generations (start-up costs seconds), one
  torch thread each.
* ``dask``: dask.distributed workers, either of a scheduler at an address (``--scheduler ADDRESS``, e.g. a
  cluster of several machines) or of a ``LocalCluster`` started here (``--dask-workers N``); one thread and
  one torch thread per worker. A worker that dies mid-chunk has its chunk rescheduled on another worker by
  the scheduler (up to ``distributed.scheduler.allowed-failures`` times, default 3; then the chunk's
  ``KilledWorker`` error is raised from ``map_unordered``).

Per-chunk time limit: with ``timeout_s``, a chunk that runs longer yields ``(index, ChunkTimeout(timeout_s))``
instead of a result and the other chunks go on. How the limit is enforced:

* ``serial``: best effort, in-process. On the main thread a ``SIGALRM`` timer interrupts the chunk at the
  limit (Python code only: a single long C call, such as one huge matmul, finishes first). Off the main
  thread the chunk runs to its end and is reported as timed out if it took longer than the limit.
* ``joblib``: the worker interrupts its own chunk with the same timer, so the worker is free at once. A
  chunk still running ``kill_after_s`` past the limit (hung in C code) is reported as timed out; once the
  other chunks in flight have finished, the pool's workers are killed and fresh ones take the rest.
* ``dask``: the limit is watched from here (dask runs tasks in worker threads, which cannot be
  interrupted): at the limit the chunk is reported as timed out and cancelled; once the other chunks in
  flight have finished, the worker still running it is restarted (needs a nanny: ``dask worker`` and
  ``LocalCluster`` have one).

Workers die with their parent: each loky worker and each worker of a ``LocalCluster`` started here runs a
watchdog thread that ends the worker within about a second once the process that started it is gone
(its parent pid changes), so a ``kill -9`` of lossforge never leaves workers training on. Workers of an
external scheduler (``dask worker``) belong to their cluster and are left alone.

Only as many chunks as there are workers are in flight at a time, so a chunk starts (nearly) when it is
dispatched and its limit runs from there; it includes a fresh worker's start-up (importing torch, a few
seconds), so limits are meant to be generous, against hung or runaway chunks.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence

from lossforge.errors import ConfigError

#: Environment of worker processes, set before they start: one OpenMP/MKL thread each.
_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
#: dask's background work in a worker process (a profiler sampling every thread's stack every 10 ms, an
#: event-loop tick every 20 ms) takes the GIL from the thread that trains, which is made of many small
#: operations; the profile and the tick are only for dask's dashboard and diagnostics.
_QUIET_DASK_WORKER = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "5s",
}
#: Idle loky workers shut down after this long (a generation's variation and rejection take seconds).
_IDLE_WORKER_TIMEOUT_S = 300
#: How often a worker checks that the process that started it is alive.
_PARENT_POLL_S = 0.5
#: Names the pid a LocalCluster worker must not outlive (read by :func:`dask_setup` in the worker).
_PARENT_ENV = "LOSSFORGE_PARENT_PID"
_watchdog_started = False


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (also when another user owns it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def exit_with_parent(parent_pid: int) -> None:
    """End this process (``os._exit``) soon after ``parent_pid`` dies: a daemon thread polls
    ``os.getppid()`` (it changes when the parent dies and the process is re-parented; no pid-reuse race),
    or, when ``parent_pid`` is not the direct parent, whether that pid exists. A parent already gone when
    this runs (killed while the worker was starting) ends the worker at once. Polling, not Linux's
    ``PR_SET_PDEATHSIG``: that fires when the parent *thread* that started the worker ends, and loky and
    dask start workers from short-lived threads. Started once per process."""
    global _watchdog_started
    direct = os.getppid() == parent_pid
    if not direct and not pid_alive(parent_pid):
        os._exit(1)
    if _watchdog_started:
        return
    _watchdog_started = True

    def watch() -> None:
        while (os.getppid() == parent_pid) if direct else pid_alive(parent_pid):
            time.sleep(_PARENT_POLL_S)
        os._exit(1)  # the parent is gone: nobody will read this worker's results

    threading.Thread(target=watch, name="lossforge-parent-watchdog", daemon=True).start()


def dask_setup(worker: Any) -> None:
    """dask preload hook (``preload=["lossforge.executor"]``): a LocalCluster worker exits with the process
    that started the cluster."""
    parent = os.environ.get(_PARENT_ENV)
    if parent and parent.isdigit():
        exit_with_parent(int(parent))


@dataclass(frozen=True)
class ChunkTimeout:
    """Stands in for the result of a chunk that ran past the per-chunk time limit of ``seconds``."""

    seconds: float

    @property
    def reason(self) -> str:
        """A failure reason for the chunk's candidates."""
        return f"scoring exceeded the time limit of {self.seconds:g} s per chunk"


class Executor(Protocol):
    """What the search needs from an executor."""

    name: str

    @property
    def n_workers(self) -> int: ...

    def map_unordered(
        self, fn: Callable[..., Any], items: Iterable[Sequence[Any]], timeout_s: float | None = None
    ) -> Iterator[tuple[int, Any]]: ...

    def close(self) -> None: ...


def _limit_threads() -> None:
    # One thread per worker: with two threads per process and any other load, training slowed ~10x here.
    os.environ.update(_THREAD_ENV)
    import torch

    torch.set_num_threads(1)


def _restore_environment(saved: dict[str, str]) -> None:
    """Put ``os.environ`` back as ``saved`` (variables added since are removed, changed ones restored)."""
    for key in set(os.environ) - set(saved):
        del os.environ[key]
    for key, value in saved.items():
        if os.environ.get(key) != value:
            os.environ[key] = value


class _Deadline(BaseException):
    """Raised into a chunk at its time limit. A BaseException so that ``score_chunk_safe``'s
    ``except Exception`` cannot turn it into an ordinary failed chunk."""


def _raise_deadline(signum: int, frame: Any) -> None:
    raise _Deadline


@contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    """Interrupt the block with :class:`_Deadline` after ``seconds`` (main thread only: only it receives signals)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGALRM, _raise_deadline)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _run_chunk(fn: Callable[..., Any], index: int, args: Sequence[Any], timeout_s: float | None) -> tuple[int, Any]:
    """``(index, fn(*args))``, or ``(index, ChunkTimeout)`` past the limit. Runs wherever the chunk runs."""
    _limit_threads()
    if not timeout_s:
        return index, fn(*args)
    start = time.monotonic()
    try:
        with _alarm(timeout_s):
            result = fn(*args)
    except _Deadline:
        return index, ChunkTimeout(timeout_s)
    if time.monotonic() - start > timeout_s:  # off the main thread nothing interrupted it
        return index, ChunkTimeout(timeout_s)
    return index, result


def _check_timeout(timeout_s: float | None) -> None:
    if timeout_s is not None and not timeout_s > 0:
        raise ConfigError(f"the per-chunk time limit must be a positive number of seconds, got {timeout_s!r}")


def _dispatch(
    submit: Callable[[int, Sequence[Any]], Any],
    release: Callable[[list[Any]], None],
    items: Iterable[Sequence[Any]],
    width: int,
    timeout_s: float | None,
    grace_s: float,
) -> Iterator[tuple[int, Any]]:
    """Run ``items`` through ``submit`` (-> a future of ``_run_chunk``'s result) with at most ``width`` in
    flight, yielding ``(index, result)`` in the order chunks finish.

    A chunk still running ``grace_s`` past the limit is presumed hung and yields ``ChunkTimeout`` at once.
    Nothing more is submitted until the other chunks in flight have finished (each bounded by its own
    limit); then ``release`` frees the workers the hung chunks hold, and dispatch goes on.
    """
    todo = deque(enumerate(items))
    finished: queue.Queue[Any] = queue.Queue()
    running: dict[Any, tuple[int, float]] = {}  # future -> (index, deadline)
    hung: list[Any] = []
    limit = timeout_s + grace_s if timeout_s else None
    while todo or running:
        while todo and not hung and len(running) < width:
            index, args = todo.popleft()
            future = submit(index, args)
            running[future] = (index, time.monotonic() + limit if limit else float("inf"))
            future.add_done_callback(finished.put)
        if not running:  # only hung chunks are left in flight
            release(hung)
            hung = []
            continue
        wait = min(deadline for _, deadline in running.values()) - time.monotonic() if limit else None
        try:
            future = finished.get(timeout=max(0.0, wait) if wait is not None else None)
        except queue.Empty:
            now = time.monotonic()
            for future, (index, deadline) in list(running.items()):
                if deadline <= now:
                    del running[future]
                    hung.append(future)
                    yield index, ChunkTimeout(timeout_s)  # type: ignore[arg-type]  # limit is set
            continue
        if future in running:
            del running[future]
            yield future.result()
        elif future in hung:  # it ended after all: its worker is free, nothing to release
            hung.remove(future)
    if hung:
        release(hung)


class SerialExecutor:
    """Runs every call in the current process, in order."""

    name = "serial"
    n_workers = 1

    def map_unordered(
        self, fn: Callable[..., Any], items: Iterable[Sequence[Any]], timeout_s: float | None = None
    ) -> Iterator[tuple[int, Any]]:
        """Yield ``(index, fn(*args))`` for each item; the time limit is best effort (module docstring)."""
        _check_timeout(timeout_s)
        for i, args in enumerate(items):
            yield _run_chunk(fn, i, args, timeout_s)

    def close(self) -> None:
        """Nothing to release."""


class JoblibExecutor:
    """Worker processes of loky's reusable executor (joblib's backend); the pool is reused between calls
    and searches, and started only when first needed."""

    name = "joblib"

    def __init__(self, n_jobs: int = -1, kill_after_s: float = 30.0) -> None:
        """``n_jobs`` worker processes (-1 or 0: one per core). ``kill_after_s``: how long past the time limit
        a chunk that has not stopped itself may run before its workers are killed (module docstring)."""
        cores = os.cpu_count() or 1
        self.n_workers = cores if n_jobs in (-1, 0) else max(1, min(n_jobs, 64))
        self.kill_after_s = kill_after_s

    def _pool(self) -> Any:
        from joblib.externals.loky import get_reusable_executor

        # The same arguments every time, so the pool is reused (loky restarts it when they change).
        return get_reusable_executor(max_workers=self.n_workers, timeout=_IDLE_WORKER_TIMEOUT_S, env=_THREAD_ENV,
                                     initializer=exit_with_parent, initargs=(os.getpid(),))

    def map_unordered(
        self, fn: Callable[..., Any], items: Iterable[Sequence[Any]], timeout_s: float | None = None
    ) -> Iterator[tuple[int, Any]]:
        """Yield ``(index, fn(*args))`` as workers finish; ``ChunkTimeout`` for chunks past ``timeout_s``."""
        _check_timeout(timeout_s)

        def submit(index: int, args: Sequence[Any]) -> Any:
            return self._pool().submit(_run_chunk, fn, index, args, timeout_s)

        def release(hung: list[Any]) -> None:
            self._pool().shutdown(wait=True, kill_workers=True)  # the next submit starts a fresh pool

        yield from _dispatch(submit, release, items, self.n_workers, timeout_s, self.kill_after_s)

    def close(self) -> None:
        """The loky pool is shared and reused; nothing to close per search."""


class DaskExecutor:
    """dask.distributed workers: a scheduler's at ``address``, or a ``LocalCluster`` of ``n_workers`` processes.

    The client (and the cluster, if started here) is kept for the executor's lifetime, so workers and their
    imports are reused between calls; :meth:`close` shuts down what this executor started.
    """

    name = "dask"

    def __init__(self, address: str | None = None, n_workers: int | None = None, timeout_s: float | None = None) -> None:
        """Connect to the scheduler at ``address`` (``n_workers`` is then ignored: the cluster has the workers
        it has), or start a local cluster of ``n_workers`` single-threaded worker processes (default: one per
        core). ``timeout_s`` bounds connecting to the scheduler (default: dask's ``comm.timeouts.connect``)."""
        from distributed import Client, LocalCluster

        self._cluster = None
        if address is None:
            count = n_workers or os.cpu_count() or 1
            if count < 1:
                raise ConfigError(f"dask needs at least one worker, got n_workers={n_workers}")
            import dask

            # dask's nannies spawn workers with MALLOC_TRIM_THRESHOLD_=65536, which turns glibc's malloc
            # to mmap and unmap every array over 128 kB: training, made of many such temporaries, ran
            # 2.5x slower (3.5 s against 1.4 s for a chunk of 16). They also write it into this process's
            # environment and leave it there, so every process started later (loky workers) inherits it.
            environ = {key: value for key, value in dask.config.get("distributed.nanny.pre-spawn-environ").items()
                       if key != "MALLOC_TRIM_THRESHOLD_"}
            saved = dict(os.environ)
            with dask.config.set({"distributed.nanny.pre-spawn-environ": environ, **_QUIET_DASK_WORKER}):
                self._cluster = LocalCluster(
                    n_workers=count, threads_per_worker=1, processes=True,
                    dashboard_address=":0",  # any free port: the default 8787 clashes with other clusters
                    silence_logs=logging.ERROR,
                    # set before the workers start: OpenMP reads it once
                    env={**_THREAD_ENV, _PARENT_ENV: str(os.getpid())},
                    # import torch at start-up, not within a chunk's time limit; exit with this process
                    preload=["lossforge.scoring", "lossforge.executor"],
                )
            _restore_environment(saved)
        options = {} if timeout_s is None else {"timeout": timeout_s}
        try:
            self._client = Client(address or self._cluster, set_as_default=False, **options)
        except (OSError, TimeoutError) as exc:
            if self._cluster is not None:
                self._cluster.close()
            raise ConfigError(f"cannot connect to the dask scheduler at {address}: {exc}") from None

    @property
    def n_workers(self) -> int:
        """Worker threads the scheduler has now (each runs one chunk at a time)."""
        return sum(self._client.nthreads().values())

    def map_unordered(
        self, fn: Callable[..., Any], items: Iterable[Sequence[Any]], timeout_s: float | None = None
    ) -> Iterator[tuple[int, Any]]:
        """Yield ``(index, fn(*args))`` as workers finish; ``ChunkTimeout`` for chunks past ``timeout_s``."""
        _check_timeout(timeout_s)
        client = self._client

        def submit(index: int, args: Sequence[Any]) -> Any:
            return client.submit(_run_chunk, fn, index, args, timeout_s, pure=False)

        def release(hung: list[Any]) -> None:
            keys = {f.key for f in hung}
            workers = [addr for addr, tasks in client.processing().items() if keys & set(tasks)]
            client.cancel(hung)
            if workers:  # the task's thread cannot be stopped; the worker process can
                client.restart_workers(workers, raise_for_error=False)

        # At most one chunk per worker thread in flight; tasks queue at the scheduler until workers join.
        yield from _dispatch(submit, release, items, max(1, self.n_workers), timeout_s, 0.0)

    def close(self) -> None:
        """Close the client, and shut down the local cluster if this executor started it."""
        self._client.close()
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None

    def __enter__(self) -> "DaskExecutor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


EXECUTORS = ("serial", "joblib", "dask")


def make_executor(kind: str = "joblib", jobs: int = -1, **options: Any) -> Executor:
    """Build an executor by name (``serial``, ``joblib`` or ``dask``).

    ``jobs`` is the number of worker processes (-1: one per core); ``jobs=1`` means in-process for joblib.
    For dask it sizes the local cluster unless ``options`` name ``n_workers``; ``options`` are
    :class:`DaskExecutor`'s (``address``, ``n_workers``, ``timeout_s``) and apply to dask only.
    """
    if kind not in EXECUTORS:
        raise ConfigError(f"unknown executor {kind!r}; choose {', '.join(EXECUTORS)}")
    if kind == "dask":
        if jobs != -1:
            options.setdefault("n_workers", jobs)
        return DaskExecutor(**options)
    if options:
        raise ConfigError(f"executor option(s) {', '.join(sorted(options))} apply to the dask executor only")
    if kind == "serial" or jobs == 1:
        return SerialExecutor()
    return JoblibExecutor(jobs)
