"""SymbolicLoss's reductions and the classification convention on inputs with more than one dimension."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lossforge.loss import SymbolicLoss

GEN = torch.Generator().manual_seed(11)


def test_mean_reduction_averages_every_element_of_a_regression_batch() -> None:
    pred, target = torch.randn(4, 3, generator=GEN), torch.randn(4, 3, generator=GEN)
    # problem="regression": a float [N, C] target could be soft class targets, which "auto" refuses to guess
    value = SymbolicLoss("(y_pred - y_real)**2", reduction="mean", problem="regression")(pred, target)
    assert value.shape == ()
    torch.testing.assert_close(value, F.mse_loss(pred, target))
    total = SymbolicLoss("(y_pred - y_real)**2", reduction="sum", problem="regression")(pred, target)
    torch.testing.assert_close(total, F.mse_loss(pred, target, reduction="sum"))


def test_classification_over_spatial_positions_follows_cross_entropy() -> None:
    # logits [N, C, H, W] with class indices [N, H, W]: softmax over the class dimension (1), summed over
    # classes, averaged over samples and positions, as torch's cross-entropy does
    logits = torch.randn(3, 5, 2, 4, generator=GEN)
    target = torch.randint(0, 5, (3, 2, 4), generator=GEN)
    ce = SymbolicLoss("-y_real*log(y_pred)", reduction="mean")
    torch.testing.assert_close(ce(logits, target), F.cross_entropy(logits, target))
    per_position = SymbolicLoss("-y_real*log(y_pred)", reduction="none")(logits, target)
    torch.testing.assert_close(per_position, F.cross_entropy(logits, target, reduction="none"))
