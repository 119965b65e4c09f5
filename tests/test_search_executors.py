"""Searches on every executor give the same run; a chunk past its time limit fails with that reason."""

from __future__ import annotations

from pathlib import Path

import lossforge
from lossforge.storage import RunStore

SMALL = dict(population=6, generations=1, chunk_size=3, validate_top=0, quiet=True)


def _summary(path: Path) -> tuple[list, list]:
    with RunStore.open(path, readonly=True) as store:
        return [g.population for g in store.generations()], [(r.key, r.fitness) for r in store.best(10)]


def test_dask_local_cluster_search_equals_serial(tmp_path: Path, tiny_suite: str) -> None:
    lossforge.search(run=tmp_path / "serial.db", suite=tiny_suite, jobs=1, executor="serial", **SMALL)
    lossforge.search(run=tmp_path / "dask.db", suite=tiny_suite, executor="dask", dask_workers=2, **SMALL)
    assert _summary(tmp_path / "serial.db") == _summary(tmp_path / "dask.db")


def test_chunk_time_limit_fails_candidates_with_the_reason(tmp_path: Path, tiny_suite: str) -> None:
    # A limit no chunk can meet: every trained candidate fails with the limit as its reason; the search
    # still finishes (the reference losses are scored without a limit).
    lossforge.search(run=tmp_path / "t.db", suite=tiny_suite, jobs=2, chunk_timeout_s=0.001,
                     **{**SMALL, "validate_top": 0})
    with RunStore.open(tmp_path / "t.db", readonly=True) as store:
        failed = [c for c in store.candidates() if c.status.value == "failed"]
        assert failed and all("time limit" in (c.reason or "") for c in failed)
        assert store.summary().status.value == "finished"
