"""Exact cross-entropy: in classification, ``log(y_pred)`` is computed as ``log_softmax`` of the logits, so
``-y_real*log(y_pred)`` is torch's cross-entropy in value and gradient at any logit gap (the protected log
alone clamps a probability below 1e-12: value 27.63, gradient 0)."""

from __future__ import annotations

import importlib.util

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lossforge.baselines import BASELINES
from lossforge.export import to_python
from lossforge.expression import LossExpression
from lossforge.loss import SymbolicLoss
from lossforge.training import BatchedTrainer


def _logits(gap: float, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Five samples over 4 classes whose true class trails the best one by ``gap`` (and two easy ones)."""
    logits = torch.tensor([[gap, 0.0, 0.0, 0.0], [0.0, gap, -gap, 1.0], [gap / 2, 0.0, gap, 0.0],
                           [1.0, 2.0, 0.5, -1.0], [0.0, 0.0, 0.0, 0.0]], dtype=dtype)
    return logits, torch.tensor([3, 2, 1, 1, 0])


def _value_and_grad(loss, logits: torch.Tensor, target: torch.Tensor):
    x = logits.clone().requires_grad_(True)
    value = loss(x, target)
    (grad,) = torch.autograd.grad(value, x)
    return value.detach(), grad


@pytest.mark.parametrize("gap", [40.0, 100.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cross_entropy_expression_is_torch_cross_entropy_at_extreme_logits(gap: float, dtype) -> None:
    logits, target = _logits(gap, dtype)
    ours = _value_and_grad(SymbolicLoss("-y_real*log(y_pred)"), logits, target)
    torch_ce = _value_and_grad(nn.CrossEntropyLoss(), logits, target)
    torch.testing.assert_close(ours[0], torch_ce[0])
    torch.testing.assert_close(ours[1], torch_ce[1])
    per_sample = SymbolicLoss("-y_real*log(y_pred)", reduction="none")(logits, target)
    torch.testing.assert_close(per_sample, F.cross_entropy(logits, target, reduction="none"))
    assert per_sample[0] == pytest.approx(gap, rel=1e-6)  # beyond the protected log's 27.63
    assert ours[1][0].abs().max() > 0.1  # the trailing sample still has a gradient


def test_log_of_a_power_of_y_pred_is_exact_too() -> None:
    logits, target = _logits(100.0, torch.float64)
    ours = _value_and_grad(SymbolicLoss("-y_real*log(y_pred**2)"), logits, target)
    ce = _value_and_grad(nn.CrossEntropyLoss(), logits, target)
    torch.testing.assert_close(ours[0], 2 * ce[0])
    torch.testing.assert_close(ours[1], 2 * ce[1])


#: The built-in expression baselines that take log(y_pred), written out from their formulas with
#: log p = log_softmax(logits) (their protected divisions and exponentials as in the search language).
_REFERENCES = {
    "cross_entropy": lambda p, lp, y: -y * lp,
    "gce": lambda p, lp, y: y * (1 - torch.exp(0.7 * lp)) / 0.7,
    "sce": lambda p, lp, y: -0.01 * y * lp - math.log(1e-4) * y * (1 - p),  # the APL code's MNIST setting
    "bootstrap_soft": lambda p, lp, y: -(0.95 * y + 0.05 * p) * lp,
    "poly1": lambda p, lp, y: -y * lp + y * (1 - p),
    "focal": lambda p, lp, y: -y * (1 - p) ** 2 * lp,
    "baikal": lambda p, lp, y: y / torch.clamp(p, min=1e-6) - lp,
}


def test_every_expression_baseline_with_a_log_is_listed() -> None:
    with_log = {name for name, b in BASELINES.items() if b.expression and "log(y_pred" in b.expression}
    assert with_log == set(_REFERENCES)


@pytest.mark.parametrize("name", sorted(_REFERENCES))
@pytest.mark.parametrize("gap", [40.0, 100.0])
def test_baselines_that_take_log_y_pred_are_exact_at_extreme_logits(name: str, gap: float) -> None:
    logits, target = _logits(gap, torch.float64)

    def reference(x, t):
        y = F.one_hot(t, x.shape[1]).to(x.dtype)
        return _REFERENCES[name](torch.softmax(x, 1), torch.log_softmax(x, 1), y).sum(1).mean()

    ours = _value_and_grad(SymbolicLoss(BASELINES[name].expression, problem="classification"), logits, target)
    want = _value_and_grad(reference, logits, target)
    # SymbolicLoss keeps its constants in float32 (0.95 -> 0.949999988), hence rtol 1e-6, not 1e-15
    torch.testing.assert_close(ours[0], want[0], rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(ours[1], want[1], rtol=1e-6, atol=1e-9)


def test_regression_keeps_the_protected_log() -> None:
    loss = SymbolicLoss("-y_real*log(y_pred)", reduction="none")
    out = loss(torch.tensor([0.0, 1e-20, 2.0]), torch.tensor([1.0, 1.0, 1.0]))
    torch.testing.assert_close(out, -torch.log(torch.tensor([1e-12, 1e-12, 2.0])))


def test_the_batched_trainer_scores_exact_cross_entropy() -> None:
    logits, target = _logits(40.0)
    outputs = torch.stack([logits, logits * 0.5, logits]).requires_grad_(True)  # K = 3 models
    losses = [SymbolicLoss("-y_real*log(y_pred)", reduction="none", problem="classification"),
              SymbolicLoss("(y_pred - y_real)**2", reduction="none", problem="classification"),
              SymbolicLoss(BASELINES["focal"].expression, reduction="none", problem="classification")]
    model = nn.Linear(1, 1)
    trainer = BatchedTrainer(model, losses, torch.optim.SGD(model.parameters(), lr=0.1))
    values = trainer.per_model_loss(outputs, target)
    (grad,) = torch.autograd.grad(values.sum(), outputs)
    for k, loss in enumerate(losses):
        alone = _value_and_grad(SymbolicLoss(loss.expression, problem="classification"),
                                outputs[k].detach(), target)
        torch.testing.assert_close(values[k].detach(), alone[0])
        torch.testing.assert_close(grad[k], alone[1])
    ce = _value_and_grad(nn.CrossEntropyLoss(), logits, target)
    torch.testing.assert_close(values[0].detach(), ce[0])
    torch.testing.assert_close(grad[0], ce[1])


@pytest.mark.parametrize("text", ["-y_real*log(y_pred)", "-y_real*(1 - y_pred)**2*log(y_pred) + 0.5*log(y_pred**2)",
                                  "(y_pred - y_real)**2"])
def test_the_py_export_computes_what_the_search_scored(text: str, tmp_path) -> None:
    expression = LossExpression.parse(text)
    path = tmp_path / "exported_loss.py"
    path.write_text(to_python(expression, name="Exported"))
    spec = importlib.util.spec_from_file_location("exported_loss", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # our own generated module, in the test only
    for gap in (40.0, 100.0):
        logits, target = _logits(gap)
        exported = _value_and_grad(module.Exported(), logits, target)
        searched = _value_and_grad(SymbolicLoss(expression), logits, target)
        torch.testing.assert_close(exported[0], searched[0], rtol=0, atol=0)
        torch.testing.assert_close(exported[1], searched[1], rtol=0, atol=0)
    x, y = torch.randn(6), torch.randn(6)  # regression: the protected log, as SymbolicLoss
    torch.testing.assert_close(module.Exported(reduction="none")(x, y),
                               SymbolicLoss(expression, reduction="none")(x, y), rtol=0, atol=0)
