"""Device tests: training on ``--device`` (cpu by default; ``pytest --device cuda`` on a GPU with a CUDA
build of torch, see ``tests/conftest.py``) gives the results training on the CPU gives, to float rounding."""

from __future__ import annotations

import pytest
import torch

from lossforge.loss import SymbolicLoss
from lossforge.tasks.classification import ClassificationTask
from lossforge.tasks.regression import RegressionTask

CE, MSE = "-y_real*log(y_pred)", "(y_pred - y_real)**2"


def test_loss_values_and_gradients_on_the_device(device: str) -> None:
    gen = torch.Generator().manual_seed(0)
    logits, target = torch.randn(32, 10, generator=gen), torch.randint(0, 10, (32,), generator=gen)
    loss = SymbolicLoss(CE)
    values = []
    for where in ("cpu", device):
        x = logits.to(where).requires_grad_(True)
        value = loss.to(where)(x, target.to(where))
        value.backward()
        assert value.device.type == torch.device(where).type
        values.append((value.detach().cpu(), x.grad.cpu()))
    torch.testing.assert_close(values[1], values[0], rtol=1e-5, atol=1e-6)


def test_regression_trains_on_the_device(device: str) -> None:
    # the numpy engine is CPU-only: on another device the task trains through autograd, compared here
    task = RegressionTask.from_preset("outliers", steps=40, n_train=64, n_test=64, hidden=8, engine="autograd")
    losses = [SymbolicLoss(MSE, reduction="none"), SymbolicLoss("sqrt((y_pred - y_real)**2)", reduction="none")]
    here, there = task.evaluate(losses, 0, "cpu"), task.evaluate(losses, 0, device)
    for a, b in zip(here, there):
        assert a.status == b.status == "complete"
        assert b.score == pytest.approx(a.score, rel=1e-3)


def test_classification_trains_on_the_device(device: str) -> None:
    task = ClassificationTask(epochs=2, n_train=256, hidden=(32,))
    losses = [SymbolicLoss(CE, reduction="none")]
    here, there = task.evaluate(losses, 0, "cpu")[0], task.evaluate(losses, 0, device)[0]
    assert here.status == there.status == "complete"
    assert there.score == pytest.approx(here.score, abs=0.03)
