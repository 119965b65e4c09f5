"""The fitness rules of ``Suite.fitness`` on a suite of two tasks and two seeds (no training: raw results
are written by hand, so each rule is checked on numbers whose answer is known)."""

from __future__ import annotations

import math

import pytest

from lossforge.scoring import suite_from_spec
from lossforge.tasks.classification import ClassificationTask
from lossforge.tasks.regression import RegressionTask


def suite(weights=(1.0, 1.0)):
    return suite_from_spec({
        "name": "pins", "seeds": [0, 1],
        "tasks": [{"name": "a", "type": "regression", "weight": weights[0]},
                  {"name": "b", "type": "regression", "weight": weights[1]}],
    })


def raw(scores_a, scores_b, statuses_a=("complete", "complete"), statuses_b=("complete", "complete")):
    def one(scores, statuses):
        return {"seeds": [0, 1], "scores": list(scores), "statuses": list(statuses),
                "reasons": [None if s == "complete" else "failed" for s in statuses], "metrics": [{}, {}]}
    return {"a": one(scores_a, statuses_a), "b": one(scores_b, statuses_b)}


REFERENCE = raw([-1.0, -4.0], [-1.0, -4.0])


def test_fitness_is_the_geometric_mean_of_the_task_scores() -> None:
    # task a: half as good as the reference on both seeds (0.5); task b: twice as good (2.0)
    fitness, summary = suite().fitness(raw([-2.0, -8.0], [-0.5, -2.0]), REFERENCE)
    assert summary["a"]["normalized"] == pytest.approx(0.5)
    assert summary["b"]["normalized"] == pytest.approx(2.0)
    assert fitness == pytest.approx(1.0)  # sqrt(0.5 * 2); the arithmetic mean would be 1.25


def test_task_weights_are_exponents_of_the_geometric_mean() -> None:
    fitness, _ = suite((3.0, 1.0)).fitness(raw([-2.0, -8.0], [-0.5, -2.0]), REFERENCE)
    assert fitness == pytest.approx(math.exp((3 * math.log(0.5) + math.log(2.0)) / 4))


def test_normalisation_is_paired_by_seed() -> None:
    # as good as the reference on each seed: 1.0 exactly, although the two seeds' scores differ fourfold
    fitness, summary = suite().fitness(REFERENCE, REFERENCE)
    assert summary["a"]["normalized"] == pytest.approx(1.0)
    assert fitness == pytest.approx(1.0)
    # swapping the seeds' scores is not as good: (1/4 + 4) / 2 per task
    fitness, _ = suite().fitness(raw([-4.0, -1.0], [-4.0, -1.0]), REFERENCE)
    assert fitness == pytest.approx((0.25 + 4.0) / 2)


def test_per_seed_fitness_uses_that_seeds_reference() -> None:
    assert suite().fitness_per_seed(raw([-2.0, -4.0], [-1.0, -4.0]), REFERENCE) == pytest.approx(
        [math.sqrt(0.5), 1.0])


def test_a_failed_task_zeroes_the_fitness() -> None:
    mine = raw([-1.0, -4.0], [-0.5, -2.0], statuses_a=("failed", "failed"))
    fitness, summary = suite().fitness(mine, REFERENCE)
    assert summary["a"]["normalized"] == 0.0
    assert fitness == 0.0


def test_a_failed_seed_counts_zero_and_is_left_out_of_the_mean_score() -> None:
    mine = raw([-1.0, -math.inf], [-1.0, -4.0], statuses_a=("complete", "failed"))
    fitness, summary = suite().fitness(mine, REFERENCE)
    assert summary["a"]["normalized"] == pytest.approx(0.5)  # (1 + 0) / 2
    assert summary["a"]["score"] == -1.0  # the complete seed's score only
    assert fitness == pytest.approx(math.sqrt(0.5))


def test_normalize_errors_and_accuracies() -> None:
    regression, classification = RegressionTask(), ClassificationTask()
    assert regression.normalize(-2.0, -1.0) == pytest.approx(0.5)  # twice the error: half as good
    assert regression.normalize(-0.5, -1.0) == pytest.approx(2.0)
    assert classification.normalize(0.45, 0.9) == pytest.approx(0.5)
    assert regression.normalize(-math.inf, -1.0) == 0.0
