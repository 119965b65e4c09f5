"""Run-file rules the search relies on: provenance of imported results, and the order of ``best``."""

from __future__ import annotations

from pathlib import Path

from lossforge.runfile import RunStore

CONFIG = {"search": {"seed": 0}}


def scored(store: RunStore, key: str, fitness: float, complexity: int) -> None:
    store.record_candidate(0, ["y_pred"], status="complete", key=key, structure_key=key, formula=key,
                           complexity=complexity, fitness=fitness, suite_hash="suite", task_scores={})


def test_an_imported_result_keeps_its_first_origin_through_a_second_import(tmp_path: Path) -> None:
    first = RunStore.create(tmp_path / "first.db", CONFIG, suite_hash="suite")
    scored(first, "k1", 0.9, 3)
    first.close()
    second = RunStore.create(tmp_path / "second.db", CONFIG, suite_hash="suite")
    assert second.import_cache(tmp_path / "first.db") == 1
    second.close()
    third = RunStore.create(tmp_path / "third.db", CONFIG, suite_hash="suite")
    assert third.import_cache(tmp_path / "second.db") == 1
    record = third.lookup("suite", "k1")
    assert record is not None and record.fitness == 0.9
    assert record.origin == str((tmp_path / "first.db").resolve())
    third.close()


def test_best_breaks_fitness_ties_towards_the_simpler_loss(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path / "run.db", CONFIG, suite_hash="suite")
    scored(store, "complex", 0.8, 9)
    scored(store, "simple", 0.8, 2)
    scored(store, "best", 0.95, 12)
    assert [r.key for r in store.best(3)] == ["best", "simple", "complex"]
    store.close()
