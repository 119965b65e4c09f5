"""Executors: where chunks of candidates are scored. The one seam where parallelism plugs in.

Every executor offers ``map_unordered(fn, items)`` yielding ``(index, result)`` as results arrive, so the
search records each finished chunk at once (a crash loses nothing already scored). Results never depend
on the executor: chunks are formed before dispatch, independent of the number of workers.

* ``serial``: in-process, for debugging and tests.
* ``joblib`` (default): loky worker processes, reused across generations (start-up costs seconds), one
  torch thread each.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Iterator, Sequence

from lossforge.errors import ConfigError


def _limit_threads() -> None:
    # One thread per worker: with two threads per process and any other load, training slowed ~10x here.
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


def _call_indexed(fn: Callable[..., Any], index: int, args: Sequence[Any]) -> tuple[int, Any]:
    _limit_threads()
    return index, fn(*args)


class SerialExecutor:
    """Runs every call in the current process, in order."""

    name = "serial"
    n_workers = 1

    def map_unordered(self, fn: Callable[..., Any], items: Iterable[Sequence[Any]]) -> Iterator[tuple[int, Any]]:
        """Yield ``(index, fn(*args))`` for each item."""
        for i, args in enumerate(items):
            yield _call_indexed(fn, i, args)

    def close(self) -> None:
        """Nothing to release."""


class JoblibExecutor:
    """joblib/loky worker processes; the pool is reused between calls."""

    name = "joblib"

    def __init__(self, n_jobs: int = -1) -> None:
        import joblib

        cores = os.cpu_count() or 1
        self.n_workers = cores if n_jobs in (-1, 0) else max(1, min(n_jobs, 64))
        self._parallel = joblib.Parallel(
            n_jobs=self.n_workers, backend="loky", return_as="generator_unordered", batch_size=1
        )

    def map_unordered(self, fn: Callable[..., Any], items: Iterable[Sequence[Any]]) -> Iterator[tuple[int, Any]]:
        """Yield ``(index, fn(*args))`` as workers finish."""
        import joblib

        items = list(items)
        if self.n_workers == 1 or len(items) <= 1:
            yield from SerialExecutor().map_unordered(fn, items)
            return
        yield from self._parallel(joblib.delayed(_call_indexed)(fn, i, args) for i, args in enumerate(items))

    def close(self) -> None:
        """The loky pool is shared and reused; nothing to close per search."""


def make_executor(kind: str = "joblib", jobs: int = -1) -> SerialExecutor | JoblibExecutor:
    """Build an executor by name."""
    if kind == "serial" or jobs == 1:
        return SerialExecutor()
    if kind == "joblib":
        return JoblibExecutor(jobs)
    raise ConfigError(f"unknown executor {kind!r}; choose serial or joblib")

