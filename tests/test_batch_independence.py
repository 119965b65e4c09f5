"""A loss's score must not depend on which or how many losses share its batched model."""

from __future__ import annotations

import pytest

from lossforge.scoring import make_loss
from lossforge.tasks.registry import task_types
from lossforge.tasks.regression import PRESETS, RegressionTask

OTHERS = [["multiply", 2.0, "multiply", "minus", "y_pred", "y_real", "minus", "y_pred", "y_real"], "mae", "huber",
          ["sqrt", "minus", "y_pred", "y_real"]]


@pytest.mark.parametrize("preset", ["gaussian", "biased_targets"])
def test_regression_score_alone_equals_score_in_a_batch(preset: str) -> None:
    task = RegressionTask(**{**PRESETS[preset], "steps": 150})
    alone = task.evaluate([make_loss("mse", "regression")], seed=3)[0]
    batch = task.evaluate([make_loss(s, "regression") for s in OTHERS[:2] + ["mse"] + OTHERS[2:]], seed=3)
    assert batch[2].score == alone.score  # bit-identical, not merely close
    assert batch[2].metrics == alone.metrics


@pytest.mark.parametrize("kind, settings", [
    ("label_noise", {"epochs": 3}),
    ("augment", {"epochs": 2}),
    ("adversarial", {"epochs": 2}),
    ("regularize", {"epochs": 2}),
    ("regularize", {"epochs": 2, "batch_norm": True, "dropout": 0.0}),
    ("label_noise", {"epochs": 1, "model": "cnn", "hidden": []}),
])
def test_classification_score_alone_equals_score_in_a_batch(kind: str, settings: dict) -> None:
    task = task_types()[kind](**settings)
    specs = ["gce", "cross_entropy", "mae"]
    alone = task.evaluate([make_loss("cross_entropy", "classification")], seed=2)[0]
    batch = task.evaluate([make_loss(s, "classification") for s in specs], seed=2)
    assert batch[1].score == alone.score  # the fitness input: bit-identical
    # side metrics (mean confidence) are reductions over a [K, N] tensor whose summation order may vary
    assert batch[1].metrics == pytest.approx(alone.metrics, rel=1e-6)  # float32 resolution
