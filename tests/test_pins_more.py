"""Pins for gaps the mutation run (scripts/mutate.py, docs/mutation.md) found in the restructured code."""

from __future__ import annotations

import torch

from lossforge import gp
from lossforge.baselines import HuberLoss
from lossforge.loss import class_probabilities

GEN = torch.Generator().manual_seed(11)


def test_baselines_take_the_softmax_over_the_class_dimension_of_spatial_logits() -> None:
    # logits [N, C, H, W]: the baselines' y_pred (class_probabilities) is a distribution over dim 1, so a
    # baseline on a segmentation-shaped batch is the same loss, position by position, as on flat [N*H*W, C]
    logits = torch.randn(2, 4, 3, 5, generator=GEN)
    target = torch.randint(0, 4, (2, 3, 5), generator=GEN)
    probs, y = class_probabilities(logits, target)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(2, 3, 5))
    torch.testing.assert_close(probs, torch.softmax(logits, dim=1))
    flat_logits = logits.permute(0, 2, 3, 1).reshape(-1, 4)
    flat = HuberLoss("classification")(flat_logits, target.reshape(-1))
    torch.testing.assert_close(HuberLoss("classification")(logits, target), flat.reshape(2, 3, 5))


def _search(tmp_path, tiny_suite: str, **kw):
    from lossforge.engine import Search, SearchConfig

    config = SearchConfig(population=8, generations=1, suite=tiny_suite, executor="serial", jobs=1, **kw)
    return Search.create(tmp_path / "run.db", config)


def _raw(seeds, score: float) -> dict:
    n = len(seeds)
    return {"seeds": list(seeds), "scores": [score] * n, "statuses": ["complete"] * n, "reasons": [None] * n,
            "metrics": [{}] * n}


def _race_generation0(search, score) -> list:
    """Generation 0's viable losses raced once, with ``score`` standing in for training; returns them."""
    search._score_specs = score
    search.evaluator.score_references(search.evaluator.reference_names())
    population, _ = search.initial_population()
    population = [ind for ind in population if search.evaluator.rejection(gp.expression_of(ind))[0] is None]
    for ind in population:
        del ind.fitness.values
    search.race(population, 1)
    return population


def test_a_loss_left_at_the_screening_rung_never_outranks_a_promoted_loss(tmp_path, tiny_suite: str) -> None:
    from lossforge.scoring import ChunkResult

    search = _search(tmp_path, tiny_suite, screening=0.5, promote=0.25)

    def score(specs, fidelity, timed=True):  # no training: references -1; a screening flatters (-1 - i/10),
        seeds = fidelity.seeds or search.suite.seeds  # the full training disappoints (-10)
        return [ChunkResult(raw={t.name: _raw(seeds, -1.0 if isinstance(s, str) else
                                              (-10.0 if fidelity.is_full else -(1 + i / 10)))
                                 for t in search.suite.tasks}) for i, s in enumerate(specs)]

    population = _race_generation0(search, score)
    keys = {id(ind): gp.expression_of(ind).key for ind in population}
    full = [ind.fitness.values[0] for ind in population if keys[id(ind)] in search.cache]
    left = [ind.fitness.values[0] for ind in population if keys[id(ind)] not in search.cache]
    assert full and left  # some promoted, some left at the first rung
    assert max(left) <= min(full)  # capped at the worst promoted loss's full fitness
    search.close()


def test_a_promoted_loss_that_fails_in_full_does_not_zero_the_losses_left_at_the_first_rung(
        tmp_path, tiny_suite: str) -> None:
    # the cap on a first-rung loss is the worst promoted loss's full fitness; a promoted loss that failed
    # (fitness 0, no measurement) made it 0, so every loss left at the first rung lost its screening signal
    from lossforge.runfile import CandidateState
    from lossforge.scoring import ChunkResult, failed_chunk

    search = _search(tmp_path, tiny_suite, screening=0.5, promote=0.5)

    def score(specs, fidelity, timed=True):  # references -1; screenings -(1 + i/10); in full the first fails
        seeds = fidelity.seeds or search.suite.seeds
        out = []
        for i, spec in enumerate(specs):
            if isinstance(spec, str):
                value = -1.0
            elif not fidelity.is_full:
                value = -(1 + i / 10)
            elif i == 0:
                out += failed_chunk(1, search.evaluator.suite_spec, seeds, "diverged")
                continue
            else:
                value = -1.5
            out.append(ChunkResult(raw={t.name: _raw(seeds, value) for t in search.suite.tasks}))
        return out

    try:
        population = _race_generation0(search, score)
        key = {id(ind): gp.expression_of(ind).key for ind in population}
        promoted = [ind for ind in population if key[id(ind)] in search.cache]
        failed = [ind for ind in promoted if search.cache[key[id(ind)]].status == CandidateState.FAILED]
        complete = [ind.fitness.values[0] for ind in promoted if ind not in failed]
        left = [ind.fitness.values[0] for ind in population if key[id(ind)] not in search.cache]
        assert failed and complete and left
        assert all(0 < f <= min(complete) for f in left), (left, complete)
    finally:
        search.close()


def test_two_gradient_twins_never_share_one_generation(tmp_path, tiny_suite: str) -> None:
    search = _search(tmp_path, tiny_suite)
    one = gp.from_tokens(["multiply", "minus", "y_pred", "y_real", "minus", "y_pred", "y_real"], search.pset,
                         search.individual_class)
    # the same gradient (a constant added), another canonical key
    twin = gp.from_tokens(["plus", "multiply", "minus", "y_pred", "y_real", "minus", "y_pred", "y_real", 1.5],
                          search.pset, search.individual_class)
    assert gp.expression_of(one).key != gp.expression_of(twin).key
    fingerprint = lambda ind: search.evaluator.rejection(gp.expression_of(ind))[1]  # noqa: E731
    assert fingerprint(one) == fingerprint(twin) is not None
    population, _ = search.initial_population()
    out, counts = search.novel([one, twin], [], population)
    assert counts["redrawn"] >= 1 and str(out[0]) == str(one)
    assert fingerprint(out[1]) != fingerprint(one)  # the twin's slot went to another loss
    search.close()


def test_nsga2_prefers_the_simpler_of_two_equally_fit_losses(tmp_path, tiny_suite: str) -> None:
    search = _search(tmp_path, tiny_suite, selection="nsga2")
    square = ["multiply", "minus", "y_pred", "y_real", "minus", "y_pred", "y_real"]

    def individual(tokens):
        ind = gp.from_tokens(tokens, search.pset, search.individual_class)
        ind.fitness.values = search.selection.objectives(0.5, gp.expression_of(ind))
        return ind

    simple, complex_ = individual(square), individual(["plus", *square, "multiply", "y_pred", "y_real"])
    assert gp.expression_of(complex_).complexity > gp.expression_of(simple).complexity
    survivors = search.selection.survivors([complex_], [simple])
    assert [str(s) for s in survivors] == [str(simple)]  # same fitness: the simpler loss dominates
    search.close()
