r"""Loss exported by lossforge (needs only torch).

Formula:  11.5*y_real*(-y_pred + y_real) - 0.1153*log(y_pred)
LaTeX:    11.5 y_{real} \left(- y_{pred} + y_{real}\right) - 0.1153 \log{\left|y_{pred}\right|}
Prefix:   plus(multiply(-0.1152981525509432, log(y_pred)), multiply(multiply(3.382311951243394, multiply(3.3990694498273597, y_real)), minus(y_real, y_pred)))
Provenance:
    run: runs/robust1.db
    rank: 1
    pick: best
    fitness: 1.0685429699853108
    validation_fitness: 1.097012855076117
    suite: robust
    key: e8514cac99188dfd
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


class RobustLabelNoiseLoss(nn.Module):
    r"""L(y_pred, y_real) = 11.5*y_real*(-y_pred + y_real) - 0.1153*log(y_pred)

    LaTeX: 11.5 y_{real} \left(- y_{pred} + y_{real}\right) - 0.1153 \log{\left|y_{pred}\right|}

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
        out = ((-0.1152981525509432 * protected_log(y_pred)) + (11.496713223257386 * y_real * (y_real + (-1.0 * y_pred))))
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
