"""The trainers' guard at its edges: the exploding-gradient threshold, frozen failed models, 'sum' losses."""

from __future__ import annotations

import pytest
import torch

from lossforge.loss import SymbolicLoss
from lossforge.tasks.regression import RegressionTask

ENGINES = ("numpy", "autograd")


def fit(engine: str, losses, steps: int = 3, **settings):
    task = RegressionTask.from_preset("gaussian", n_train=64, steps=steps, engine=engine, **settings)
    data = task.make_data(0)
    k = len(losses)
    return task, task.fit(losses, data.x_noisy.expand(k, -1, -1), data.y_noisy.expand(k, -1), 0, record=True)


@pytest.mark.parametrize("engine", ENGINES)
def test_gradients_just_above_the_threshold_explode_and_just_below_do_not(engine: str) -> None:
    # the gradient norm of c * y_pred on this model is about 2.1 c at the first step
    losses = [lambda p, t: 1e6 * p, lambda p, t: 3e5 * p, SymbolicLoss("1000000.0*y_pred", reduction="none")]
    _, result = fit(engine, losses, steps=1)
    assert result.failures[0] == result.failures[2] == "exploding gradient (norm 2.1e+06) at step 0"
    assert result.failures[1] is None


@pytest.mark.parametrize("engine", ENGINES)
def test_a_failed_model_is_frozen_at_its_weights(engine: str) -> None:
    task = RegressionTask.from_preset("gaussian", n_train=64, steps=5, engine=engine)
    initial = [p.detach().clone() for p in task.build_model(2, 0).parameters()]
    _, result = fit(engine, [lambda p, t: (p - t) * float("nan"), SymbolicLoss("(y_pred - y_real)**2", reduction="none")],
                    steps=5)
    assert result.failures[0] == "non-finite loss value at step 0" and result.failures[1] is None
    for before, after in zip(initial, result.model.parameters()):
        torch.testing.assert_close(after[0], before[0], rtol=0, atol=0)  # model 0 never moved
        assert not torch.equal(after[1], before[1])  # model 1 trained
    assert (result.train_loss[:, 0] == 0).all()


def test_sum_losses_with_a_numpy_kernel_train_as_with_autograd() -> None:
    losses = [SymbolicLoss("(y_pred - y_real)**2", reduction="sum"), SymbolicLoss("(y_pred - y_real)**2", reduction="none")]
    _, fast = fit("numpy", losses, steps=4)
    _, reference = fit("autograd", losses, steps=4)
    torch.testing.assert_close(fast.train_loss.float(), reference.train_loss.float(), rtol=1e-4, atol=1e-5)
    assert fast.train_loss[0, 0] == pytest.approx(64 * fast.train_loss[0, 1].item(), rel=1e-5)
