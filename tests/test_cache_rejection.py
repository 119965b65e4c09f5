"""Early rejection rules, gradient fingerprints, and the evaluation cache within and across runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import lossforge
from lossforge import gp
from lossforge.engine import Search, SearchConfig
from lossforge.expression import LossExpression
from lossforge.rejection import probe, rejection_reason
from lossforge.runfile import RunStore

REG = {"regression"}
CLS = {"classification"}


@pytest.mark.parametrize(
    "text, problems, fragment",
    [
        ("y_pred*y_pred", REG, "does not depend on y_real"),
        ("y_real*y_real + 1", REG, "does not depend on y_pred"),
        ("div(1, (y_pred - y_real)**2)", REG, "not finite|exploding|towards the targets"),
        ("exp(30*y_pred)*y_real", REG, "exploding|non-finite|not finite"),
        ("y_pred - y_real", REG, "towards the targets"),
        ("(y_pred - y_real)**2 + 0*y_pred - y_pred*0", REG, ""),  # canonical form drops it: passes
        ("y_real*log(y_pred)", CLS, "towards the targets"),  # cross-entropy with the wrong sign
        ("sqrt(y_pred - y_pred + y_real)", REG, "does not depend on y_pred"),
    ],
)
def test_rejection_rules(text: str, problems: set[str], fragment: str) -> None:
    reason = rejection_reason(LossExpression.parse(text), problems)
    if fragment:
        assert reason is not None and re.search(fragment, reason), reason
    else:
        assert reason is None


@pytest.mark.parametrize(
    "text, problems",
    [
        ("(y_pred - y_real)**2", REG),  # MSE
        ("sqrt((y_pred - y_real)**2)", REG),  # MAE
        ("-y_real*log(y_pred)", CLS),  # CE
        ("sqrt((y_pred - y_real)**2)", CLS),  # MAE on softmax
        ("y_real*(1 - exp(0.7*log(y_pred)))/0.7", CLS),  # GCE
        ("-0.1*y_real*log(y_pred) + 4*y_real*(1 - y_pred)", CLS),  # SCE
        ("-y_real*(1 - y_pred)**2*log(y_pred)", CLS),  # focal
    ],
)
def test_common_good_losses_are_not_rejected(text: str, problems: set[str]) -> None:
    assert rejection_reason(LossExpression.parse(text), problems) is None


def test_mixed_suites_reject_only_if_every_problem_rejects() -> None:
    ce = LossExpression.parse("-y_real*log(y_pred)")
    assert rejection_reason(ce, {"regression", "classification"}) is None
    assert rejection_reason(LossExpression.parse("y_pred - y_real"), {"regression", "classification"})


def test_fingerprint_merges_losses_with_equal_gradients_only() -> None:
    fp = lambda t, p=REG: probe(LossExpression.parse(t), p).fingerprint  # noqa: E731
    assert fp("(y_pred - y_real)**2") == fp("(y_pred - y_real)**2 + 3")  # same gradient, same training
    assert fp("-y_real*log(y_pred)", CLS) == fp("-y_real*log(y_pred) + 0.5*y_real", CLS)  # Σ y_c = 1
    assert fp("(y_pred - y_real)**2") != fp("2*(y_pred - y_real)**2")
    assert fp("(y_pred - y_real)**2") != fp("sqrt((y_pred - y_real)**2)")


class _CountingSearch(Search):
    """A Search that records every loss it sends to training."""

    trained: list[str]

    def _score_specs(self, specs, seeds=None, timed=True):
        self.trained.extend(LossExpression(s).key for s in specs if not isinstance(s, str))
        return super()._score_specs(specs, seeds, timed)


def test_equivalent_forms_and_twins_are_never_trained_twice(tmp_path: Path, tiny_suite: str) -> None:
    engine = _CountingSearch.create(tmp_path / "c.db", SearchConfig(population=4, generations=1, suite=tiny_suite,
                                                                     jobs=1, chunk_size=4))
    engine.trained = []
    engine.score_baselines()
    forms = ["(y_pred - y_real)**2", "(y_real - y_pred)*(y_real - y_pred)", "(y_pred - y_real)**2 + 1",
             "sqrt((y_pred - y_real)**2)", "sqrt((y_real - y_pred)**2)"]
    individuals = [gp.from_tokens(LossExpression.parse(f).tokens, engine.pset, engine.individual_class) for f in forms]
    counts = engine.evaluate(individuals, 0)
    assert counts["evaluated"] == 2 and counts["cache_hits"] == 3
    assert len(engine.trained) == len(set(engine.trained))  # each loss sent to training once
    fits = [ind.fitness.values[0] for ind in individuals]
    assert fits[0] == fits[1] == fits[2] and fits[3] == fits[4]
    again = [gp.from_tokens(LossExpression.parse(f).tokens, engine.pset, engine.individual_class) for f in forms]
    trained_before = list(engine.trained)
    assert engine.evaluate(again, 1)["cache_hits"] == len(forms)
    assert engine.trained == trained_before
    engine.close()


def test_cache_across_runs_with_the_same_suite(tmp_path: Path, tiny_suite: str) -> None:
    lossforge.search(run=tmp_path / "first.db", suite=tiny_suite, population=6, generations=1, jobs=1,
                     quiet=True, validate_top=0)
    lossforge.search(run=tmp_path / "second.db", suite=tiny_suite, population=6, generations=1, jobs=1,
                     quiet=True, validate_top=0, cache_from=[tmp_path / "first.db"])
    with RunStore.open(tmp_path / "first.db", readonly=True) as a, RunStore.open(tmp_path / "second.db",
                                                                                 readonly=True) as b:
        first = {c.key: c for c in a.candidates()}
        reused = [c for c in b.candidates() if c.worker and c.worker.startswith("cache:")]
        # same seed, same suite: the second run meets the first run's losses and trains none of them again
        assert reused and all(c.key in first and c.fitness == first[c.key].fitness for c in reused)
        trained_again = [c for c in b.candidates() if c.key in first and not (c.worker or "").startswith("cache:")]
        assert not trained_again


def test_a_scale_free_fingerprint_ignores_a_positive_factor_only() -> None:
    fp = lambda t, p=CLS, sf=True: probe(LossExpression.parse(t), p, scale_free=sf).fingerprint  # noqa: E731
    gce = "y_real*(1.0 - exp(0.7*log(y_pred)))"
    assert fp(gce) == fp(f"0.7407*{gce}") == fp(f"2.5*{gce} + 3") == fp(f"div({gce}, y_real + 1.68)")
    assert fp(gce) != fp("y_real*(1.0 - exp(0.6*log(y_pred)))")  # another q
    assert fp(gce) != fp(f"div({gce}, y_pred + 1.68)")  # a weight that depends on the prediction
    assert fp("(y_pred - y_real)**2", REG) == fp("0.5*(y_pred - y_real)**2", REG)
    assert fp("(y_pred - y_real)**2", REG) != fp("sqrt((y_pred - y_real)**2)", REG)
    assert fp(gce, sf=False) != fp(f"0.7407*{gce}", sf=False)  # without it a factor makes another loss


@pytest.mark.parametrize("task, scale_free", [
    ({"type": "label_noise"}, True),
    ({"type": "label_noise", "settings": {"optimizer": "sgd"}}, False),  # SGD's step scales with the loss
    ({"type": "label_noise", "settings": {"weight_decay": 1e-4}}, False),  # so does the decay's share
    ({"type": "regularize", "preset": "entropy"}, False),  # the confidence penalty does not scale
    ({"type": "adversarial", "preset": "pgd"}, True),  # PGD steps follow the gradient's sign
    ({"type": "regression"}, True),
])
def test_a_suite_is_scale_free_when_every_task_trains_with_plain_adam(task: dict, scale_free: bool) -> None:
    from lossforge.scoring import suite_from_spec

    suite = suite_from_spec({"name": "s", "seeds": [0], "tasks": [task]})
    assert suite.scale_free is scale_free
    both = suite_from_spec({"name": "s", "seeds": [0], "tasks": [task, {"type": "regression", "name": "r"}]})
    assert both.scale_free is scale_free  # every task must be


@pytest.mark.parametrize("twins", [True, False])
def test_a_rescaled_loss_is_scored_once_where_the_factor_changes_nothing(tmp_path: Path, tiny_suite: str,
                                                                         twins: bool) -> None:
    config = SearchConfig(population=4, generations=1, suite=tiny_suite, jobs=1, chunk_size=4, scale_twins=twins)
    engine = _CountingSearch.create(tmp_path / "s.db", config)
    engine.trained = []
    engine.score_baselines()
    forms = ["sqrt((y_pred - y_real)**2)", "2.5*sqrt((y_pred - y_real)**2)"]
    individuals = [gp.from_tokens(LossExpression.parse(f).tokens, engine.pset, engine.individual_class) for f in forms]
    counts = engine.evaluate(individuals, 0)
    assert (counts["evaluated"], counts["cache_hits"]) == ((1, 1) if twins else (2, 0))
    if twins:
        assert individuals[0].fitness.values == individuals[1].fitness.values
    engine.close()


def test_runs_stored_before_scale_twins_resume_as_they_ran() -> None:
    assert SearchConfig().scale_twins is False  # off by default (measured: docs/search.md)
    stored = SearchConfig(population=4).to_dict()
    del stored["scale_twins"]
    assert SearchConfig.from_dict(stored).scale_twins is False
    assert SearchConfig.from_dict({**stored, "scale_twins": True}).scale_twins is True


def test_a_function_of_a_number_folds_to_a_constant_and_trains() -> None:
    # sympy keeps sin(1) symbolic: cos(y_pred - y_pred) = 1 made sin(1), which reached torch.sin as a float and
    # stopped a search in the probe (found in a search of the robust suite)
    tokens = ('multiply', 'multiply', 'minus', -1.22, 'y_real', 'multiply', 'multiply', 'y_real', -1.68, 'minus',
              1.0, 'y_pred', 'log', 'plus', 'minus', 'y_pred', 0.46, 'sin', 'cos', 'minus', 'y_pred', 'y_pred')
    expr = LossExpression(tokens)
    assert "sin" not in expr.formula() and "0.3815" in expr.formula()  # -0.46 + sin(1)
    for scale_free in (False, True):
        assert probe(expr, CLS, scale_free=scale_free).reason  # trained nowhere: it does not descend
    folded = LossExpression.parse("y_real*sin(cos(y_pred - y_pred))*log(y_pred) - cos(2)*y_pred")
    assert "sin" not in folded.formula() and "cos" not in folded.formula()
    loss = lossforge.SymbolicLoss(folded)
    import torch

    value = loss(torch.randn(4, 3), torch.tensor([0, 1, 2, 1]))
    assert torch.isfinite(value)


def test_a_probe_that_raises_any_error_rejects_the_loss_with_its_reason(monkeypatch) -> None:
    import lossforge.rejection as rejection

    def broken(*args, **kwargs):
        raise TypeError("sin(): argument 'input' must be Tensor, not float")

    monkeypatch.setattr(rejection, "numeric_probe", broken)
    result = rejection.probe(LossExpression.parse("(y_pred - y_real)**2"), REG)
    assert result.reason.startswith("raised TypeError on probe inputs") and result.fingerprint is None
