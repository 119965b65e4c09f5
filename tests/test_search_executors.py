"""Searches on every executor give the same run; a chunk past its time limit fails with that reason."""

from __future__ import annotations

from pathlib import Path

import lossforge
from lossforge.runfile import RunStore

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


class _TwoWorkersReversed:
    """A serial executor that claims two workers, records the chunks it gets and returns them last first."""

    name = "recording"
    n_workers = 2

    def __init__(self) -> None:
        self.chunk_sizes: list[int] = []

    def map_unordered(self, fn, items, timeout_s=None):
        items = list(items)
        self.chunk_sizes = [len(args[0]) for args in items]
        for index in reversed(range(len(items))):
            yield index, fn(*items[index])

    def close(self) -> None:
        pass


def test_generation_is_split_evenly_over_workers_and_results_keep_their_order(tmp_path: Path, tiny_suite: str) -> None:
    from lossforge.engine import Search, SearchConfig
    from lossforge.expression import LossExpression

    specs = ["mse", "mae", "huber", list(LossExpression.coerce("sqrt(y_pred - y_real) + 0.1*y_pred").tokens),
             list(LossExpression.coerce("(y_pred - y_real)**2 * exp(y_real)").tokens)]
    search = Search.create(tmp_path / "r.db", SearchConfig(suite=tiny_suite, jobs=1, executor="serial", chunk_size=16))
    try:
        expected = [r.raw for r in search._score_specs(specs)]  # one worker: one chunk
        search.executor = recorder = _TwoWorkersReversed()
        got = [r.raw for r in search._score_specs(specs)]
        assert sorted(recorder.chunk_sizes) == [2, 3]  # not 5 on one worker while the other waits
        assert got == expected
        search.chunk_size = 2
        got = [r.raw for r in search._score_specs(specs)]
        assert max(recorder.chunk_sizes) <= 2 and sum(recorder.chunk_sizes) == 5
        assert got == expected
    finally:
        search.close()


def test_memory_cap_on_chunk_size() -> None:
    from lossforge.engine import (
        MEMORY_BUDGET_FRACTION,
        WORKER_BASE_BYTES,
        memory_chunk_cap,
    )

    mb = 2**20
    assert memory_chunk_cap(16, 5 * mb, 2, available=16 * 1024 * mb) == 16  # plenty: the setting stands
    # half of 2 GB, less two workers' base, shared by 2 workers at 50 MB a model
    budget = MEMORY_BUDGET_FRACTION * 2048 * mb - 2 * WORKER_BASE_BYTES
    assert memory_chunk_cap(16, 50 * mb, 2, available=2048 * mb) == int(budget // (2 * 50 * mb)) < 16
    assert memory_chunk_cap(16, 50 * mb, 2, available=100 * mb) == 1  # never below one loss
    assert memory_chunk_cap(16, 0, 2, available=100 * mb) == 16  # negligible per-model memory


def test_search_caps_its_chunks_when_memory_is_short(tmp_path: Path, monkeypatch) -> None:
    from lossforge import engine

    suite = tmp_path / "cnn.toml"
    suite.write_text('name = "cnn"\nseeds = [0]\n\n[[tasks]]\nname = "cnn"\ntype = "label_noise"\n'
                     'settings = { model = "cnn", channels = [8], hidden = [], epochs = 1 }\n')
    short = 2 * engine.WORKER_BASE_BYTES + 64 * 2**20
    monkeypatch.setattr(engine, "available_memory_bytes", lambda: short)
    config = engine.SearchConfig(suite=str(suite), jobs=1, executor="serial")
    search = engine.Search.create(tmp_path / "m.db", config)
    try:
        per_model = search.suite.tasks[0].task.memory_per_model()
        assert per_model > 0
        assert search.chunk_size == engine.memory_chunk_cap(16, per_model, 1, available=short) < config.chunk_size
    finally:
        search.close()
