"""Rules of the search loop checked without training: scores are written by hand where a rule needs them."""

from __future__ import annotations

import dataclasses
from pathlib import Path


from lossforge import gp
from lossforge.engine import MEMORY_BUDGET_FRACTION, WORKER_BASE_BYTES, Search, SearchConfig, memory_chunk_cap
from lossforge.scoring import ChunkResult, failed_chunk
from lossforge.progress import GenerationStats
from lossforge.runfile import CandidateState


def make_search(tmp_path: Path, tiny_suite: str, name: str = "run", **kw) -> Search:
    config = SearchConfig(population=8, generations=2, suite=tiny_suite, executor="serial", jobs=1, **kw)
    search = Search.create(tmp_path / f"{name}.db", config)
    # the reference's raw results, as score_baselines would store them (no training)
    search.evaluator.set_reference_raw({t.name: _raw(-1.0) for t in search.suite.tasks})
    return search


def _raw(score: float, status: str = "complete") -> dict:
    return {"seeds": [0], "scores": [score], "statuses": [status], "reasons": [None], "metrics": [{}]}


def fake_scores(search: Search):
    """Stands in for training: loss i of a call scores -(1 + i / 10) on every task."""
    def score(specs, fidelity=None, timed=True):
        return [ChunkResult(raw={t.name: _raw(-(1 + i / 10)) for t in search.suite.tasks}) for i in range(len(specs))]
    return score


def next_generation(search: Search, population, generation: int):
    """The offspring of one generation as the loop breeds them (kept elite first, then the varied)."""
    search._seed(generation)
    kept, children = search.selection.breed(population, search.variation, search.toolbox)
    return kept + children


def with_fitness(population, values):
    for ind, value in zip(population, values):
        ind.fitness.values = (value,) if len(ind.fitness.weights) == 1 else (value, float(len(ind)))
    return population


def test_tournament_keeps_the_elite_unchanged(tmp_path: Path, tiny_suite: str) -> None:
    search = make_search(tmp_path, tiny_suite, elite=2)
    population, _ = search.initial_population()
    with_fitness(population, [0.1 * i for i in range(len(population))])
    offspring = next_generation(search, population, 1)
    best = sorted(population, key=lambda ind: ind.fitness.values[0], reverse=True)[:2]
    assert [str(ind) for ind in offspring[:2]] == [str(ind) for ind in best]
    assert all(ind.fitness.valid for ind in offspring[:2])  # not re-scored
    assert len(offspring) == len(population)
    search.close()


def test_each_generation_draws_from_its_own_seed(tmp_path: Path, tiny_suite: str) -> None:
    search = make_search(tmp_path, tiny_suite, elite=0, crossover_prob=1.0, mutation_prob=1.0)
    population, _ = search.initial_population()
    with_fitness(population, [0.1 * i for i in range(len(population))])

    def children(gen):
        return [str(ind) for ind in next_generation(search, [search.toolbox.clone(i) for i in population], gen)]

    assert children(1) == children(1)
    assert children(1) != children(2)
    search.close()


def test_nsga2_survivors_are_chosen_from_parents_and_offspring(tmp_path: Path, tiny_suite: str) -> None:
    search = make_search(tmp_path, tiny_suite, selection="nsga2")
    population, _ = search.initial_population()
    with_fitness(population, [1.0 + i for i in range(len(population))])
    offspring = with_fitness([search.toolbox.clone(i) for i in population], [-5.0] * len(population))
    for ind in offspring:  # dominated: worse fitness and more complex than every parent
        ind.fitness.values = (-5.0, 1e6)
    survivors = search.selection.survivors(population, offspring)
    assert sorted(ind.fitness.values for ind in survivors) == sorted(ind.fitness.values for ind in population)
    search.close()


def test_a_loss_whose_every_task_failed_is_recorded_failed(tmp_path: Path, tiny_suite: str, monkeypatch) -> None:
    search = make_search(tmp_path, tiny_suite)
    monkeypatch.setattr(search.evaluator, "train",
                        lambda specs, fidelity=None, timed=True: failed_chunk(len(specs), search.evaluator.suite_spec,
                                                                              None, "boom"))
    population, _ = search.initial_population()
    counts = search.evaluate(population[:2], 0)
    assert counts["failed"] == counts["evaluated"] >= 1
    records = [r for r in search.store.candidates() if r.status != CandidateState.REJECTED]
    assert records and all(r.status == CandidateState.FAILED and r.fitness is None for r in records)
    assert all("boom" in r.reason for r in records)
    assert all(ind.fitness.values[0] == 0.0 for ind in population[:2])
    search.close()


def test_resume_restores_the_gradient_fingerprints(tmp_path: Path, tiny_suite: str, monkeypatch) -> None:
    search = make_search(tmp_path, tiny_suite)
    monkeypatch.setattr(search.evaluator, "train", fake_scores(search))
    population, _ = search.initial_population()
    search.evaluate(population, 0)
    # generation 0 finished (a resumed run re-probes the fingerprints of finished generations only)
    search.store.record_generation(0, [{"tree": gp.to_tokens(ind), "fitness": ind.fitness.values[0]}
                                       for ind in population],
                              dataclasses.asdict(GenerationStats(0, len(population), 0, 0, 0, 1.0, 1.0, "y_pred", 0.0)))
    fingerprints = dict(search.evaluator.fingerprints)
    assert fingerprints
    search.close()
    resumed = Search.resume(tmp_path / "run.db")
    assert resumed.evaluator.fingerprints == fingerprints  # so a gradient twin of a scored loss is not trained again
    resumed.close()


def test_memory_cap_shares_the_budget_between_workers() -> None:
    gib, per_model = 1 << 30, 100 << 20
    budget = MEMORY_BUDGET_FRACTION * 8 * gib - 4 * WORKER_BASE_BYTES
    assert memory_chunk_cap(256, per_model, 4, available=8 * gib) == int(budget // (4 * per_model))
    assert memory_chunk_cap(16, gib, 2, available=gib) == 1  # never below one loss
    assert memory_chunk_cap(16, 0, 2, available=gib) == 16  # negligible memory: the configured size


def test_derive_seed_is_stable() -> None:
    assert gp.derive_seed("generation", 0, 1) == gp.derive_seed("generation", 0, 1)
    assert gp.derive_seed("generation", 0, 1) != gp.derive_seed("generation", 0, 2)
