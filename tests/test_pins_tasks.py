"""Task rules that the scores rest on: noise models, purification, schedules, random streams, procedures."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lossforge.loss import SymbolicLoss
from lossforge.models import BatchedBatchNorm, drop_block
from lossforge.tasks.adversarial import AdversarialTask, pgd
from lossforge.tasks.augment import AugmentTask
from lossforge.tasks.classification import ClassificationTask, Streams
from lossforge.tasks.data import add_label_noise, generator, load_split
from lossforge.tasks.regression import NoiseEstimate, RegressionTask
from lossforge.tasks.regularize import RegularizeTask, smooth_targets
from lossforge.training import BatchedTrainer

CE = "-y_real*log(y_pred)"


# --- regression -----------------------------------------------------------------------------------------------


def test_outliers_are_one_sided_gross_errors() -> None:
    task = RegressionTask.from_preset("outliers")
    noise = task.draw_noise(np.random.default_rng(0), 20_000)
    gross = noise > 0.5 * task.outlier_scale - 5 * task.noise_std
    assert gross.mean() == pytest.approx(task.outlier_fraction, abs=0.01)
    assert (noise > -5 * task.noise_std).all()  # none on the other side


def test_purification_keeps_only_significant_shifts() -> None:
    rng = np.random.default_rng(1)
    small = NoiseEstimate.from_residuals(rng.normal(0.02, 1.0, 50), rng.normal(5.0, 1.0, 50), z=3.0)
    assert small.input_mean != 0.0 and small.input_shift == 0.0  # within three standard errors of 0
    assert small.target_shift == small.target_mean == pytest.approx(5.0, abs=0.5)


def test_cosine_schedule_starts_at_lr_and_halves_midway() -> None:
    task = RegressionTask(lr=0.1)
    assert task.learning_rate(0, 10) == pytest.approx(0.1)
    assert task.learning_rate(5, 10) == pytest.approx(0.05)
    assert RegressionTask(lr=0.1, schedule="constant").learning_rate(7, 10) == 0.1


def test_regression_score_averages_the_noisy_and_purified_runs() -> None:
    task = RegressionTask.from_preset("biased_targets", steps=5, n_train=32, n_test=16, hidden=4)
    (result,) = task.evaluate([SymbolicLoss("(y_pred - y_real)**2", reduction="none")], 0)
    assert result.metrics["purified"] == 1.0
    assert result.metrics["rmse_noisy"] != result.metrics["rmse_purified"]
    assert result.score == pytest.approx(-0.5 * (result.metrics["rmse_noisy"] + result.metrics["rmse_purified"]))


# --- classification and procedures ---------------------------------------------------------------------------


def test_label_noise_comes_from_the_noise_stream_of_the_seed() -> None:
    task = ClassificationTask(noise="symmetric", noise_rate=0.4)
    split = load_split(task.dataset, 3, task.test_fraction, task.n_train)
    expected = add_label_noise(split.y_train, split.n_classes, "symmetric", 0.4, generator(3, "noise"))
    assert torch.equal(task.data(3).y_train, expected)


def test_free_adversarial_perturbation_stays_in_the_epsilon_ball() -> None:
    task = AdversarialTask(attack="free", epsilon=0.05, free_replays=3, n_train=64, batch_size=32, hidden=(8,))
    data = task.data(0)
    model = task.build_model(2, data.x_train[0].numel(), data.n_classes, generator(0, "init"))
    trainer = BatchedTrainer(model, [SymbolicLoss(CE, reduction="none")] * 2, task.make_optimizer(model))
    streams = Streams.from_seed(0)
    for start in (0, 32, 0):
        task.free_step(model, trainer, data.x_train[start:start + 32], data.y_train[start:start + 32], streams)
    delta = streams.state["free_delta"]
    assert delta.abs().max() <= task.epsilon + 1e-7
    assert delta.abs().max() > 0.5 * task.epsilon  # it moved


def test_pgd_stays_in_the_epsilon_ball_and_the_unit_box() -> None:
    task = ClassificationTask(n_train=32, hidden=(8,))
    data = task.data(0)
    model = task.build_model(2, data.x_train[0].numel(), data.n_classes, generator(0, "init"))
    x = data.x_test[:16].expand(2, *data.x_test[:16].shape)
    adv = pgd(model, x, data.y_test[:16], 0.3, 0.2, 3, generator=generator(0, "attack"))
    assert (adv - x).abs().max() <= 0.3 + 1e-6
    assert adv.min() >= 0.0 and adv.max() <= 1.0
    assert (adv - x).abs().max() > 0.1


def test_procedure_scores_weigh_their_metrics() -> None:
    adversarial = AdversarialTask(robust_weight=0.75)
    assert adversarial.score({"acc_pgd": 1.0, "acc_fgsm": 0.0, "acc_clean": 0.0}) == pytest.approx(0.75)
    assert adversarial.score({"acc_pgd": 0.0, "acc_fgsm": 1.0, "acc_clean": 1.0}) == pytest.approx(0.25)
    augment = AugmentTask()
    assert augment.score({"acc_clean": 0.3, "acc_noise": 0.0, "acc_rotate": 0.9}) == pytest.approx(0.4)


def test_smoothed_targets_are_distributions() -> None:
    targets = smooth_targets(torch.tensor([0, 3, 9]), 10, 0.1)
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(3))
    assert targets[1, 3] == pytest.approx(0.91) and targets[1, 0] == pytest.approx(0.01)


def test_entropy_penalty_lowers_confidence() -> None:
    settings = dict(dropout=0.0, label_smoothing=0.0, noise="none", epochs=4, n_train=256, hidden=(16,))
    loss = [SymbolicLoss(CE, reduction="none")]
    plain = RegularizeTask(**settings).evaluate(loss, 0)[0]
    penalised = RegularizeTask(**settings, entropy_weight=2.0).evaluate(loss, 0)[0]
    assert penalised.metrics["confidence"] < plain.metrics["confidence"] - 0.02, (penalised, plain)


# --- models ------------------------------------------------------------------------------------------------------


def test_batch_norm_running_variance_is_unbiased() -> None:
    norm = BatchedBatchNorm(1, 2, momentum=0.5)
    x = torch.randn(1, 6, 2, generator=torch.Generator().manual_seed(0))
    norm.train()
    norm(x)
    expected = 0.5 * 1.0 + 0.5 * x[0].var(dim=0, unbiased=True)
    torch.testing.assert_close(norm.running_var[0], expected)


def test_drop_block_rescales_the_survivors() -> None:
    x = torch.ones(2, 4, 3, 8, 8)
    out = drop_block(x, 0.3, 3, torch.Generator().manual_seed(0))
    assert (out == 0).any()
    assert out.mean().item() == pytest.approx(1.0, rel=1e-5)
    assert math.isclose(out.max().item(), 64 * 4 * 3 / (out[0] > 0).sum().item() , rel_tol=1e-5)


class _InfiniteAtTest(torch.nn.Module):
    """A classifier whose model 0 outputs inf once in eval mode (training is unaffected)."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        out = self.inner(x, generator)
        if not self.training:
            out = out.clone()
            out[0] = math.inf
        return out


class _InfiniteAtTestTask(ClassificationTask):
    def build_model(self, n_models, n_features, n_classes, init):
        return _InfiniteAtTest(super().build_model(n_models, n_features, n_classes, init))


def test_non_finite_test_outputs_fail_their_model_only() -> None:
    task = _InfiniteAtTestTask(epochs=1, n_train=64, hidden=(8,))
    first, second = task.evaluate([SymbolicLoss(CE, reduction="none")] * 2, 0)
    assert first.status == "failed" and first.reason == "non-finite outputs on the test inputs"
    assert first.score == task.worst_score
    assert second.status == "complete"
