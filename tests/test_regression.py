"""The noise-purified cubic regression task: loss rankings that should hold, purification, batching, isolation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lossforge.errors import ConfigError
from lossforge.tasks.regression import PRESETS, NoiseEstimate, RegressionTask

torch.set_num_threads(1)

SEEDS = (0, 1)


def mse(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return (p - t) ** 2


def mae(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return (p - t).abs()


def huber(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return F.huber_loss(p, t, reduction="none", delta=1.0)


def pinball_90(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Fits the 90th percentile instead of the centre: a clearly biased loss under symmetric noise."""
    r = t - p
    return torch.maximum(0.9 * r, -0.1 * r)


def errors(preset: str, losses: list, seeds=SEEDS, **overrides) -> np.ndarray:
    """Clean-target RMSE (mean of the noisy and purified runs) per loss, averaged over seeds."""
    task = RegressionTask.from_preset(preset, **overrides)
    scores = [[-r.score for r in task.evaluate(losses, seed=s)] for s in seeds]
    return np.mean(scores, axis=0)


def test_huber_and_mae_beat_mse_under_outlier_contamination() -> None:
    err_mse, err_huber, err_mae = errors("outliers", [mse, huber, mae])
    assert err_huber < 0.5 * err_mse
    assert err_mae < 0.5 * err_mse


def test_robust_losses_beat_mse_under_heavy_tails() -> None:
    err_mse, err_huber = errors("heavy_tailed", [mse, huber])
    assert err_huber < 0.75 * err_mse


def test_mse_is_near_the_best_under_gaussian_noise() -> None:
    err_mse, err_mae, err_huber, err_bad = errors("gaussian", [mse, mae, huber, pinball_90])
    assert err_mse <= 1.1 * min(err_mae, err_huber)
    assert err_mse < 0.5 * err_bad


@pytest.mark.parametrize("preset", ["shifted_inputs", "biased_targets"])
def test_purification_lowers_the_error_under_shifted_noise(preset: str) -> None:
    (result,) = RegressionTask.from_preset(preset).evaluate([mse], seed=0)
    assert result.status == "complete"
    assert result.metrics["rmse_purified"] < 0.5 * result.metrics["rmse_noisy"]


def test_purification_estimates_the_shift_robustly() -> None:
    rng = np.random.default_rng(0)
    residuals = rng.normal(3.0, 1.0, 64)
    residuals[:6] += 80.0  # gross errors must not drag the estimate
    est = NoiseEstimate.from_residuals(residuals, np.zeros(64), z=3.0)
    assert abs(est.input_mean - 3.0) < 0.5 and 0.5 < est.input_std < 1.6
    assert est.input_shift == est.input_mean
    assert est.target_shift == 0.0


def test_purification_leaves_unbiased_data_alone() -> None:
    # An insignificant estimated mean is not subtracted: it would add a bias to unbiased data.
    task = RegressionTask.from_preset("gaussian")
    for seed in range(5):
        data = task.make_data(seed)
        assert not data.purification_changes
        assert abs(data.estimate.target_mean) < 3.0 * data.estimate.target_std


def test_batched_equals_one_by_one() -> None:
    task = RegressionTask.from_preset("shifted_inputs", steps=150)
    batched = task.evaluate([mse, mae, huber], seed=4)
    for loss, together in zip([mse, mae, huber], batched):
        (alone,) = task.evaluate([loss], seed=4)
        assert together.status == alone.status == "complete"
        assert together.score == pytest.approx(alone.score, rel=1e-4, abs=1e-6)
        for key in ("rmse_noisy", "rmse_purified"):
            assert together.metrics[key] == pytest.approx(alone.metrics[key], rel=1e-4, abs=1e-6)


def test_same_seed_gives_identical_results() -> None:
    task = RegressionTask.from_preset("outliers", steps=100)
    first = [r.to_dict() for r in task.evaluate([mse, huber], seed=7)]
    again = [r.to_dict() for r in task.evaluate([mse, huber], seed=7)]
    other = [r.to_dict() for r in task.evaluate([mse, huber], seed=8)]
    assert first == again
    assert first != other


def test_misbehaving_losses_fail_alone() -> None:
    def raises_type_error(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        raise TypeError("unsupported operand")

    def raises_runtime_error(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("shape mismatch")

    def returns_nan(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (p - t) * float("nan")

    def ignores_prediction(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(t)

    task = RegressionTask.from_preset("shifted_inputs", steps=60)
    losses = [mse, raises_type_error, returns_nan, huber, raises_runtime_error, ignores_prediction]
    results = task.evaluate(losses, seed=2)
    statuses = [r.status for r in results]
    assert statuses == ["complete", "failed", "failed", "complete", "failed", "failed"]
    for r in results:
        assert not math.isnan(r.score)
        if r.status == "failed":
            assert r.reason and r.score == task.worst_score
    assert "TypeError" in results[1].reason and "non-finite" in results[2].reason
    assert "gradient" in results[5].reason
    (alone,) = task.evaluate([huber], seed=2)
    assert results[3].score == pytest.approx(alone.score, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"noise": "laplace"}, "noise"),
        ({"noise_on": "x"}, "noise_on"),
        ({"noise_std": -1.0}, "noise_std"),
        ({"noise_mean": float("nan")}, "noise_mean"),
        ({"outlier_fraction": 0.6}, "outlier_fraction"),
        ({"t_df": 0.0}, "t_df"),
        ({"n_train": 2}, "n_train"),
        ({"n_calibration": 2.5}, "n_calibration"),
        ({"steps": True}, "steps"),
        ({"lr": 0.0}, "lr"),
        ({"x_low": 3.0, "x_high": 1.0}, "x_low"),
        ({"activation": "sigmoid"}, "activation"),
    ],
)
def test_invalid_settings_raise_config_error(settings: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        RegressionTask(**settings)


def test_presets_are_valid_plain_settings() -> None:
    with pytest.raises(ConfigError, match="preset"):
        RegressionTask.from_preset("no_such_preset")
    for name, settings in PRESETS.items():
        task = RegressionTask.from_preset(name)
        assert all(isinstance(v, (int, float, str)) for v in task.settings().values()), name
        assert {k: task.settings()[k] for k in settings} == settings
