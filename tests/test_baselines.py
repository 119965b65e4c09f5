"""Each known loss computes its published formula."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lossforge.api import score
from lossforge.baselines import BASELINES, baselines_for, get_baseline, same_as_known
from lossforge.expression import LossExpression
from lossforge.tuning import tune_baselines
from lossforge.cli import main
from lossforge.errors import ConfigError
from lossforge.scoring import load_suite

GEN = torch.Generator().manual_seed(0)
LOGITS = torch.randn(12, 5, generator=GEN, dtype=torch.float64) * 2
LABELS = torch.randint(0, 5, (12,), generator=GEN)
P = torch.softmax(LOGITS, 1)
P_Y = P.gather(1, LABELS[:, None]).squeeze(1)


def _cls(name: str) -> torch.Tensor:
    return get_baseline(name).make("classification")(LOGITS, LABELS)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("cross_entropy", F.cross_entropy(LOGITS, LABELS, reduction="none")),
        ("gce", (1 - P_Y**0.7) / 0.7),
        # MNIST setting of the APL code, log 0 := log(1e-4) as that code computes it
        ("sce", 0.01 * F.cross_entropy(LOGITS, LABELS, reduction="none") - math.log(1e-4) * (1 - P_Y)),
        ("agce", (5**0.2 - (4 + P_Y) ** 0.2) / 0.2),
        ("aul", ((3 - P_Y) ** 0.1 - 2**0.1) / 0.1),
        ("mae", 2 * (1 - P_Y)),
        ("mse", ((P - F.one_hot(LABELS, 5)) ** 2).sum(1)),
        ("taylor_ce", (1 - P_Y) + (1 - P_Y) ** 2 / 2),
        ("poly1", F.cross_entropy(LOGITS, LABELS, reduction="none") + (1 - P_Y)),
        ("focal", -((1 - P_Y) ** 2) * torch.log(P_Y)),
        ("label_smoothing", F.cross_entropy(LOGITS, LABELS, reduction="none", label_smoothing=0.1)),
        ("bootstrap_soft", -((0.95 * F.one_hot(LABELS, 5) + 0.05 * P) * torch.log(P)).sum(1)),
        ("baikal", (F.one_hot(LABELS, 5) / P).sum(1) - torch.log(P).sum(1)),
    ],
)
def test_classification_baselines_match_their_formulas(name: str, expected: torch.Tensor) -> None:
    torch.testing.assert_close(_cls(name), expected, rtol=1e-5, atol=1e-5)


LOG_P = torch.log_softmax(LOGITS, 1)
NCE = -LOG_P.gather(1, LABELS[:, None]).squeeze(1) / -LOG_P.sum(1)


def test_nce_rce() -> None:
    # the APL code's MNIST setting: alpha = 1, beta = 10; RCE = -log(1e-4) (1 - p_y)
    torch.testing.assert_close(_cls("nce_rce"), NCE + 10 * -math.log(1e-4) * (1 - P_Y))


def test_anl_ce_and_nce_agce_match_their_papers() -> None:
    # ANL-CE (Ye et al., 2023, eq. for NNCE): 1 - (A + log p_y) / sum_k (A + log p_k), A = -log(1e-7)
    a = -math.log(1e-7)
    nnce = 1 - (a + torch.log(P_Y)) / (a + torch.log(P)).sum(1)
    torch.testing.assert_close(_cls("anl_ce"), NCE + nnce)
    # NCE + AGCE (Zhou et al., 2021) at alpha = 1, beta = 4, a = 6, q = 1.5
    torch.testing.assert_close(_cls("nce_agce"), NCE + 4 * (7**1.5 - (6 + P_Y) ** 1.5) / 1.5)


# --- the authors' code, transcribed (Virusdoll/Active-Negative-Loss loss.py, which copies the NCE/RCE/SCE of
# HanxunH/Active-Passive-Losses and the AGCE/AUL of hitcszx/ALFs); batch means, float64 --------------------

def _code_nce(pred, labels, num_classes):
    pred = F.log_softmax(pred, dim=1)
    label_one_hot = F.one_hot(labels, num_classes).to(pred.dtype)
    return (-1 * torch.sum(label_one_hot * pred, dim=1) / (-pred.sum(dim=1))).mean()


def _code_nnce(pred, labels, num_classes, min_prob=1e-7):
    A = -torch.tensor(min_prob, dtype=pred.dtype).log()
    pred = F.softmax(pred, dim=1)
    pred = pred.clamp(min=min_prob, max=1)
    pred = A + pred.log()
    label_one_hot = F.one_hot(labels, num_classes)
    return (1 - (label_one_hot * pred).sum(dim=1) / pred.sum(dim=1)).mean()


def _code_rce(pred, labels, num_classes):
    pred = F.softmax(pred, dim=1)
    pred = torch.clamp(pred, min=1e-7, max=1.0)
    label_one_hot = F.one_hot(labels, num_classes).to(pred.dtype)
    label_one_hot = torch.clamp(label_one_hot, min=1e-4, max=1.0)
    return (-1 * torch.sum(pred * torch.log(label_one_hot), dim=1)).mean()


def _code_agce(pred, labels, num_classes, a, q):
    pred = F.softmax(pred, dim=1)
    label_one_hot = F.one_hot(labels, num_classes).to(pred.dtype)
    return (((a + 1) ** q - torch.pow(a + torch.sum(label_one_hot * pred, dim=1), q)) / q).mean()


def _code_aul(pred, labels, num_classes, a, q):
    pred = F.softmax(pred, dim=1)
    label_one_hot = F.one_hot(labels, num_classes).to(pred.dtype)
    return ((torch.pow(a - torch.sum(label_one_hot * pred, dim=1), q) - (a - 1) ** q) / q).mean()


def _code(name, pred, labels):
    c = pred.shape[1]
    if name == "anl_ce":  # config/mnist_anl_ce.json: alpha 1, beta 1, min_prob 1e-7
        return _code_nce(pred, labels, c) + _code_nnce(pred, labels, c)
    if name == "nce_agce":  # ALFs lnl/config.py CIFAR10: NCEandAGCE(alpha=1, beta=4, a=6, q=1.5)
        return _code_nce(pred, labels, c) + 4 * _code_agce(pred, labels, c, 6, 1.5)
    if name == "nce_rce":  # APL configs/mnist/sym/nce+rce.yaml: alpha 1, beta 10
        return _code_nce(pred, labels, c) + 10 * _code_rce(pred, labels, c)
    if name == "sce":  # APL configs/mnist/sym/sce.yaml: alpha 0.01, beta 1
        return 0.01 * F.cross_entropy(pred, labels) + _code_rce(pred, labels, c)
    if name == "agce":  # ALFs MNIST: AGCELoss(a=4, q=0.2)
        return _code_agce(pred, labels, c, 4, 0.2)
    assert name == "aul"  # ALFs MNIST: AUELoss(a=3, q=0.1)
    return _code_aul(pred, labels, c, 3, 0.1)


@pytest.mark.parametrize("name", ["anl_ce", "nce_agce", "nce_rce", "sce", "agce", "aul"])
# at 5 some probabilities fall below the 1e-7 clamps while p_y stays above the protected log's 1e-12
@pytest.mark.parametrize("scale", [1.0, 5.0])
def test_new_baselines_match_the_authors_code_on_fixed_logits(name: str, scale: float) -> None:
    logits = (LOGITS * scale).requires_grad_(True)
    ours = get_baseline(name).make("classification")(logits, LABELS).mean()
    theirs = _code(name, logits, LABELS)
    if scale > 1:
        assert (torch.softmax(logits, 1) < 1e-7).any()
    # expression baselines compile their constants to float32 (as the search does), and SCE's expression form
    # leaves RCE's 1e-7 clamp of p out (a difference below 9 classes * 1e-7 * 9.21); the modules match exactly
    expression = get_baseline(name).expression is not None
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-5 if expression else 1e-9)
    (g_ours,) = torch.autograd.grad(ours, logits, retain_graph=True)
    (g_theirs,) = torch.autograd.grad(theirs, logits)
    torch.testing.assert_close(g_ours, g_theirs, rtol=1e-5, atol=1e-6)


def test_hyper_parameters_are_set_by_spec_and_checked() -> None:
    tuned = get_baseline("nce_agce(alpha=0.5, q=0.2)")
    assert dict(tuned.params) == {"alpha": 0.5, "beta": 4.0, "a": 6.0, "q": 0.2}
    expected = 0.5 * NCE + 4 * (7**0.2 - (6 + P_Y) ** 0.2) / 0.2
    torch.testing.assert_close(tuned.make("classification")(LOGITS, LABELS), expected)
    setting = get_baseline("anl_ce").tunable()
    assert setting.constants == [1.0, 1.0]
    assert get_baseline(setting.with_constants([2.0, 3.0]).spec).params == (("alpha", 2.0), ("beta", 3.0))
    for bad, match in [("anl_ce(gamma=1)", "no hyper-parameter 'gamma'"), ("anl_ce(alpha=__import__)", "finite"),
                       ("anl_ce(alpha=inf)", "finite"), ("mae(a=1)", "no hyper-parameters"),
                       ("nope(a=1)", "unknown baseline")]:
        with pytest.raises(ConfigError, match=match):
            get_baseline(bad)


def test_regression_baselines() -> None:
    x, y = torch.randn(20, generator=GEN, dtype=torch.float64) * 3, torch.randn(20, generator=GEN, dtype=torch.float64)
    torch.testing.assert_close(get_baseline("mse").make("regression")(x, y), (x - y) ** 2)
    torch.testing.assert_close(get_baseline("mae").make("regression")(x, y), (x - y).abs(), atol=1e-6, rtol=0)
    torch.testing.assert_close(get_baseline("huber").make("regression")(x, y), F.huber_loss(x, y, reduction="none"))


def test_every_baseline_cites_a_source_and_the_registry_is_filtered_by_problem() -> None:
    assert all(b.source for b in BASELINES.values())
    assert "huber" in {b.name for b in baselines_for("regression")}
    assert "cross_entropy" not in {b.name for b in baselines_for("regression")}
    with pytest.raises(ConfigError, match="unknown baseline"):
        get_baseline("hinge")


TINY_CLASSIFICATION = str(Path(__file__).parent / "data" / "tiny_classification.toml")


def test_tuning_a_torch_baseline_and_an_expression_baseline() -> None:
    suite = load_suite(TINY_CLASSIFICATION)
    first = tune_baselines(["anl_ce", "gce"], suite, iterations=2, seed=3)
    again = tune_baselines(["anl_ce", "gce"], suite, iterations=2, seed=3, jobs=2)
    assert first == again  # seeded: the same directions, the same trainings, whatever the worker count
    anl, gce = first
    # the best variant seen is kept, so tuning never loses on the tuning seeds
    assert anl.fitness_after >= anl.fitness_before and gce.fitness_after >= gce.fitness_before
    # a torch baseline's setting is a spec that get_baseline reads back; an expression's, prefix tokens
    assert isinstance(anl.spec, str) and get_baseline(anl.spec).name == "anl_ce"
    assert isinstance(gce.spec, list)
    # scoring the tuned spec on the tuning seeds reproduces the tuned fitness
    rows = score([], suite, baselines=[anl.spec], jobs=1)
    assert rows[0].fitness == pytest.approx(anl.fitness_after, abs=1e-9)


def test_baselines_cli_tune_adds_tuned_rows(capsys: pytest.CaptureFixture) -> None:
    code = main(["baselines", "--suite", TINY_CLASSIFICATION, "--baselines", "cross_entropy,nce_agce",
                 "--tune", "--tune-iterations", "1", "--validation"])
    out = capsys.readouterr().out
    assert code == 0
    assert "tuned nce_agce:" in out and "tuned cross_entropy:" in out
    assert "nce_agce" in out.split("(fitness:")[0]
    assert main(["baselines", "--suite", TINY_CLASSIFICATION, "--baselines", "hinge"]) == 2


@pytest.mark.parametrize("problem", ["classification", "regression"])
def test_every_expressible_baseline_is_recognised_as_itself(problem: str) -> None:
    for b in baselines_for(problem):
        if b.expression is not None:
            name, scale = same_as_known(LossExpression.parse(b.expression), problem)
            assert name == b.name and scale == pytest.approx(1.0, rel=1e-9)


def test_a_rescaled_or_shifted_known_loss_is_recognised_and_a_changed_one_is_not() -> None:
    gce = "y_real*(1.0 - exp(0.7*log(y_pred)))"  # GCE q = 0.7 up to its 1/q factor
    name, factor = same_as_known(LossExpression.parse(f"2.5*{gce} + 3.0"), "classification")
    assert name == "gce" and factor == pytest.approx(2.5 / (1 / 0.7), rel=1e-6)
    # dividing by a term of y_real only is a factor for one-hot targets (y_real = 0 gives 0 either way)
    name, factor = same_as_known(LossExpression.parse(f"div({gce}, y_real + 1.68)"), "classification")
    assert name == "gce" and factor == pytest.approx(0.7 / 2.68, rel=1e-6)
    for other in ("y_real*(1.0 - exp(0.6*log(y_pred)))",        # another q
                  f"-2.5*{gce}",                                  # a negative factor reverses training
                  f"div({gce}, y_pred + 1.68)",                   # a weight that depends on the prediction
                  "y_real*(-0.8869*y_pred - sqrt(y_pred) + 0.1131)"):
        assert same_as_known(LossExpression.parse(other), "classification") is None, other
    name, factor = same_as_known(LossExpression.parse("0.5*(y_pred - y_real)**2 + 1"), "regression")
    assert name == "mse" and factor == pytest.approx(0.5, rel=1e-9)


def test_a_baseline_without_settings_is_tuned_from_its_own_score(tiny_suite: str) -> None:
    """Huber has no hyper-parameters: its tunable spec was "huber()", which get_baseline refuses, so
    `baselines --tune` printed "fitness 0.0000 -> 0.0000" for it beside a table that said 3.41."""
    start = get_baseline("huber").tunable()
    assert start.spec == "huber" and get_baseline(start.spec).name == "huber"
    suite = load_suite(tiny_suite)
    (tuned,) = tune_baselines(["huber"], suite, iterations=1)
    (row,) = [r for r in score([], suite, baselines=["huber"], jobs=1) if r.name == "huber"]
    assert tuned.fitness_before == tuned.fitness_after == row.fitness > 0
