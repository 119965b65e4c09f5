r"""Loss exported by lossforge (needs only torch).

Formula:  (-y_pred - y_real*(y_pred + 0.8006*y_real) - 0.02179)*log(y_pred)
LaTeX:    \left(- y_{pred} - y_{real} \left(y_{pred} + 0.8006 y_{real}\right) - 0.02179\right) \log{\left|y_{pred}\right|}
Prefix:   multiply(minus(-0.021794529842954165, plus(multiply(plus(multiply(0.8005986442313308, y_real), y_pred), y_real), y_pred)), log(y_pred))
Provenance:
    run: runs/robust2.db
    rank: 1
    pick: best
    fitness: 1.0755216829242225
    validation_fitness: 1.0940389424060413
    suite: robust
    key: 4fc9ff9e474c7f82
"""

import torch
from torch import nn

DIV_EPS = 1e-06
SQRT_EPS = 1e-12
LOG_EPS = 1e-12
EXP_MAX = 30.0


def protected_log(a: torch.Tensor) -> torch.Tensor:
    """``log(max(|a|, LOG_EPS))``."""
    return torch.log(torch.clamp(torch.as_tensor(a).abs(), min=LOG_EPS))


def class_probabilities(input: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(softmax(input), one-hot or soft target)`` for logits ``[N, C, ...]`` and class indices or
    probabilities: the classification convention's ``y_pred`` and ``y_real``."""
    y_pred = torch.softmax(input, dim=1)
    if target.is_floating_point():
        if target.shape != input.shape:
            raise ValueError(
                f"soft targets must have the shape of the logits {tuple(input.shape)}, got {tuple(target.shape)}"
            )
        return y_pred, target.to(y_pred.dtype)
    return y_pred, nn.functional.one_hot(target.long(), input.shape[1]).movedim(-1, 1).to(y_pred.dtype)


class RobustLabelNoiseLossSeed1(nn.Module):
    r"""L(y_pred, y_real) = (-y_pred - y_real*(y_pred + 0.8006*y_real) - 0.02179)*log(y_pred)

    LaTeX: \left(- y_{pred} - y_{real} \left(y_{pred} + 0.8006 y_{real}\right) - 0.02179\right) \log{\left|y_{pred}\right|}

    Regression: input and target of the same shape, loss applied elementwise. Classification (integer
    class targets, or problem="classification" for soft targets): y_pred = softmax(input, dim=1), y_real =
    one-hot target, per-sample loss summed over classes. reduction: "mean" | "sum" | "none".
    """

    def __init__(self, reduction: str = "mean", problem: str = "auto") -> None:
        super().__init__()
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', not {reduction!r}")
        self.reduction = reduction
        self.problem = problem

    @staticmethod
    def elementwise(y_pred: torch.Tensor, y_real: torch.Tensor) -> torch.Tensor:
        out = ((-0.021794529842954165 + (-1.0 * y_pred) + (-1.0 * y_real * (y_pred + (0.8005986442313308 * y_real)))) * protected_log(y_pred))
        return out + torch.zeros_like(y_pred)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        classification = self.problem == "classification" or (
            self.problem == "auto" and not target.is_floating_point() and input.dim() == target.dim() + 1
        )
        if classification:
            y_pred, y_real = class_probabilities(input, target)
            per_sample = self.elementwise(y_pred, y_real).sum(dim=1)
        else:
            if input.shape != target.shape:
                raise ValueError(f"input {tuple(input.shape)} and target {tuple(target.shape)} must match")
            per_sample = self.elementwise(input, target.to(input.dtype))
        if self.reduction == "mean":
            return per_sample.mean()
        if self.reduction == "sum":
            return per_sample.sum()
        return per_sample
