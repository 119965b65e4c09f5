"""Search quality machinery: constant tuning, NSGA-II, seeding, constraints, statistics, ranking picks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from scipy import stats as scipy_stats

import lossforge
from lossforge.baselines import BASELINES
from lossforge.errors import SpaceError
from lossforge.expression import LossExpression
from lossforge.ranking import _knee, pareto_front, ranking
from lossforge.scoring import load_suite, score_chunk_safe
from lossforge.space import load_space
from lossforge.stats import mean_ci, paired_comparison
from lossforge.runfile import RunStore
from lossforge.tuning import tune_constants


def test_tuning_fixes_a_badly_chosen_constant(tiny_suite: str) -> None:
    suite = load_suite(tiny_suite)
    reference = {t.name: score_chunk_safe(["mse"], suite.spec())[0].raw[t.name] for t in suite.tasks}
    # A Cauchy-type loss whose scale makes it almost MSE: under outliers a larger scale is far better.
    start = LossExpression.parse("log(1 + 0.001*(y_pred - y_real)**2)")
    result = tune_constants(start, suite, reference, iterations=3)
    assert result.tuned.constants != start.constants
    assert result.fitness_after > result.fitness_before * 1.5
    # the reported fitness is the tuned loss's real fitness, scored again from scratch
    again = score_chunk_safe([list(result.tuned.tokens)], suite.spec())[0]
    assert suite.fitness(again.raw, reference)[0] == pytest.approx(result.fitness_after)


def test_pareto_front_is_non_dominated() -> None:
    points = [(3, 0.5), (5, 0.9), (4, 0.4), (8, 0.95), (5, 0.7), (9, 0.95), (2, 0.1)]
    front = pareto_front(points)
    assert [points[i] for i in front] == [(2, 0.1), (3, 0.5), (5, 0.9), (8, 0.95)]
    for i in front:
        assert not any(c <= points[i][0] and f >= points[i][1] and (c, f) != points[i] for c, f in points)
    # the knee of a front that saturates is where the gain flattens
    assert _knee([(1, 0.0), (2, 0.9), (3, 0.95), (10, 1.0)]) == 1


def test_nsga2_search_keeps_a_non_dominated_population(tmp_path: Path, tiny_suite: str) -> None:
    lossforge.search(run=tmp_path / "nsga.db", suite=tiny_suite, population=8, generations=2, jobs=1,
                     selection="nsga2", validate_top=0)
    with RunStore.open(tmp_path / "nsga.db", readonly=True) as store:
        last = store.last_generation()
        points = [(LossExpression(p["tree"]).complexity, p["fitness"]) for p in last.population]
        front = [points[i] for i in pareto_front(points)]
        # NSGA-II keeps the best front: no stored candidate dominates a member of the final first front
        for c, f in front:
            assert not any(
                (r.complexity < c and r.fitness >= f) or (r.complexity <= c and r.fitness > f)
                for r in store.best(1000)
            )


def test_seeding_puts_the_baselines_in_generation_zero(tmp_path: Path, tiny_suite: str) -> None:
    lossforge.search(run=tmp_path / "seeded.db", suite=tiny_suite, population=8, generations=1, jobs=1,
                     seed_baselines=True, validate_top=0)
    with RunStore.open(tmp_path / "seeded.db", readonly=True) as store:
        gen0 = [LossExpression(p["tree"]).key for p in store.generations()[0].population]
    space = load_space("survey")
    expected = [LossExpression.parse(b.expression).key for b in BASELINES.values()
                if b.expression and b.problem in ("any", "regression")
                and space.violation(LossExpression.parse(b.expression).tokens) is None]
    assert expected and set(expected) <= set(gen0)


def test_constraints_are_enforced_on_every_offspring(tmp_path: Path, tiny_suite: str) -> None:
    lossforge.search(run=tmp_path / "c.db", suite=tiny_suite, population=10, generations=3, jobs=1, validate_top=0)
    space = load_space("survey")
    with RunStore.open(tmp_path / "c.db", readonly=True) as store:
        for g in store.generations():
            for p in g.population:
                assert space.violation(p["tree"]) is None


def _space_file(tmp_path: Path, constraints: str) -> Path:
    text = (Path(__file__).parent.parent / "search_spaces" / "survey.toml").read_text()
    text = text[: text.index("[constraints]")] + "[constraints]\n" + constraints + "\n"
    path = tmp_path / "space.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "constraints, fragment",
    [
        ('forbid_nesting = [["exp", "tan"]]', "forbid_nesting"),
        ('forbid_nesting = ["exp"]', "pairs"),
        ("max_nesting = { exp = 0 }", "max_nesting.exp"),
        ('require_variables = ["z"]', "require_variables"),
        ("max_depth_of = 3", "unknown field"),
    ],
)
def test_bad_constraint_gets_a_clear_error(tmp_path: Path, constraints: str, fragment: str) -> None:
    path = _space_file(tmp_path, constraints)
    with pytest.raises(SpaceError, match=fragment) as info:
        load_space(path)
    assert str(path) in str(info.value)


def test_constraint_checks() -> None:
    space = load_space("survey")
    assert space.violation(LossExpression.parse("exp(exp(y_pred))*y_real").tokens).startswith("constraint")
    assert space.violation(LossExpression.parse("sin(cos(sin(y_pred)))*y_real").tokens) is not None
    assert space.violation(LossExpression.parse("y_pred*y_pred").tokens) is not None  # y_real required
    assert space.violation(LossExpression.parse("exp(y_pred)*exp(y_real)").tokens) is None


def test_mean_ci_matches_the_t_interval() -> None:
    values = [0.81, 0.86, 0.79, 0.9, 0.84]
    mean, half = mean_ci(values)
    lo, hi = scipy_stats.t.interval(0.95, len(values) - 1, loc=mean, scale=scipy_stats.sem(values))
    assert mean == pytest.approx(sum(values) / 5)
    assert half == pytest.approx((hi - lo) / 2)
    assert mean_ci([1.0])[1] == math.inf


def test_paired_comparison() -> None:
    a, b = [0.9, 0.85, 0.92, 0.88], [0.8, 0.8, 0.83, 0.81]
    cmp = paired_comparison(a, b)
    assert cmp.mean_diff == pytest.approx(sum(x - y for x, y in zip(a, b)) / 4)
    assert cmp.p_value == pytest.approx(scipy_stats.ttest_rel(a, b).pvalue)
    assert cmp.n == 4
    # pairing matters: a constant shift is certain when paired even though the lists overlap
    assert paired_comparison([1.0, 2.0, 3.0], [0.5, 1.5, 2.5]).p_value == 0.0
    with pytest.raises(ValueError):
        paired_comparison([1.0], [1.0, 2.0])


def test_ranking_prefers_validation_fitness(tmp_path: Path, tiny_suite: str) -> None:
    lossforge.search(run=tmp_path / "v.db", suite=tiny_suite, population=8, generations=1, jobs=1,
                     seed_baselines=True, validate_top=3)
    with RunStore.open(tmp_path / "v.db", readonly=True) as store:
        ranked = ranking(store)
        validated = [r for r in ranked if r.validation_fitness is not None]
        assert len(validated) == 3 and ranked[:3] == validated
        assert [r.validation_fitness for r in validated] == sorted((r.validation_fitness for r in validated),
                                                                   reverse=True)
        knee = ranking(store, pick="knee")[0]
        front = pareto_front([(r.record.complexity, r.fitness) for r in ranked])
        assert knee.record.key in {ranked[i].record.key for i in front}
