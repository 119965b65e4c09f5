"""Known losses, written in the search language wherever it can express them, plain torch otherwise.

Every baseline is usable wherever a candidate is: scored on a suite, shown beside evolved losses, or put
in the initial population (the expression ones). Classification expressions follow the
:class:`~lossforge.loss.SymbolicLoss` convention: ``y_pred`` is a softmax probability, ``y_real`` the one-hot
target, and the per-sample loss sums the expression over classes (so ``-y_real*log(y_pred)`` is
cross-entropy).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import nn

from lossforge.errors import ConfigError
from lossforge.expression import LossExpression
from lossforge.loss import SymbolicLoss, class_probabilities

Problem = Literal["regression", "classification", "any"]


@dataclass(frozen=True)
class Baseline:
    """A named known loss: an expression in the search language, or a torch factory."""

    name: str
    problem: Problem
    source: str
    expression: str | None = None
    factory: Callable[[str], nn.Module] | None = None

    def make(self, problem: str) -> nn.Module:
        """A per-sample (``reduction='none'``) loss module for ``problem``."""
        if self.expression is not None:
            return SymbolicLoss(self.expression, reduction="none", problem=problem)
        assert self.factory is not None
        return self.factory(problem)

    @property
    def tokens(self) -> tuple | None:
        """Prefix tokens of the expression form (None for torch-only baselines)."""
        return LossExpression.parse(self.expression).tokens if self.expression else None


class HuberLoss(nn.Module):
    """Huber loss (Huber, 1964; δ = 1), per element; for classification, between the softmax
    probabilities and the one-hot target, summed over classes (the SymbolicLoss convention)."""

    def __init__(self, problem: str = "regression", delta: float = 1.0) -> None:
        super().__init__()
        self.problem, self.delta = problem, delta

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.problem == "classification":
            probs, y = class_probabilities(input, target)
            return nn.functional.huber_loss(probs, y, reduction="none", delta=self.delta).sum(1)
        return nn.functional.huber_loss(input, target, reduction="none", delta=self.delta)


class NCERCELoss(nn.Module):
    """NCE + RCE (Ma et al., 2020, "Normalized Loss Functions for Deep Learning with Noisy Labels"),
    α = β = 1, log 0 := -4 in RCE. NCE divides by a sum over classes, which the elementwise language
    cannot express."""

    def __init__(self, problem: str = "classification", alpha: float = 1.0, beta: float = 1.0,
                 log_zero: float = -4.0) -> None:
        super().__init__()
        self.alpha, self.beta, self.log_zero = alpha, beta, log_zero

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = torch.log_softmax(input, dim=1)
        probs, y = class_probabilities(input, target)
        nce = (-(y * log_p).sum(1)) / (-log_p.sum(1))
        rce = -(probs * torch.clamp(torch.log(y), min=self.log_zero)).sum(1)
        return self.alpha * nce + self.beta * rce


class LabelSmoothingCE(nn.Module):
    """Cross-entropy with label smoothing ε = 0.1 (Szegedy et al., 2016): the smoothed target depends on
    the number of classes, so it is plain torch."""

    def __init__(self, problem: str = "classification", smoothing: float = 0.1) -> None:
        super().__init__()
        self.smoothing = smoothing

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = torch.log_softmax(input, dim=1)
        _, y = class_probabilities(input, target)
        y = y * (1 - self.smoothing) + self.smoothing / input.shape[1]
        return -(y * log_p).sum(1)


BASELINES: dict[str, Baseline] = {
    b.name: b
    for b in [
        Baseline("mse", "any", "Mean squared error (Gauss/Legendre); on softmax probabilities: Brier score.",
                 expression="(y_pred - y_real)**2"),
        Baseline("mae", "any", "Mean absolute error; on softmax: Ghosh et al., 2017 (robust to symmetric noise).",
                 expression="sqrt((y_pred - y_real)**2)"),
        Baseline("huber", "any", "Huber, 1964, 'Robust Estimation of a Location Parameter' (δ = 1).",
                 factory=HuberLoss),
        Baseline("cross_entropy", "classification", "Cross-entropy: -Σ_c y_c log p_c.",
                 expression="-y_real*log(y_pred)"),
        Baseline("gce", "classification",
                 "Generalized cross-entropy, Zhang & Sabuncu, 2018: (1 - p_y^q)/q with q = 0.7.",
                 expression="y_real*(1 - exp(0.7*log(y_pred)))/0.7"),
        Baseline("sce", "classification",
                 "Symmetric cross-entropy, Wang et al., 2019: α·CE + β·RCE, α = 0.1, β = 1, log 0 := -4 "
                 "(RCE = 4(1 - p_y)).",
                 expression="-0.1*y_real*log(y_pred) + 4*y_real*(1 - y_pred)"),
        Baseline("nce_rce", "classification", NCERCELoss.__doc__.split("\n")[0], factory=NCERCELoss),
        Baseline("bootstrap_soft", "classification",
                 "Soft bootstrapping, Reed et al., 2015: -Σ (β y + (1-β) p) log p, β = 0.95.",
                 expression="-(0.95*y_real + 0.05*y_pred)*log(y_pred)"),
        Baseline("taylor_ce", "classification",
                 "Taylor cross-entropy, Feng et al., 2020: Σ_{k=1..2} (1 - p_y)^k / k.",
                 expression="y_real*((1 - y_pred) + (1 - y_pred)**2/2)"),
        Baseline("poly1", "classification",
                 "Poly-1, Leng et al., 2022: CE + ε(1 - p_y), ε = 1.",
                 expression="-y_real*log(y_pred) + y_real*(1 - y_pred)"),
        Baseline("focal", "classification", "Focal loss, Lin et al., 2017: -(1 - p_y)^γ log p_y, γ = 2.",
                 expression="-y_real*(1 - y_pred)**2*log(y_pred)"),
        Baseline("label_smoothing", "classification", LabelSmoothingCE.__doc__.split("\n")[0],
                 factory=LabelSmoothingCE),
        Baseline("ganetic", "any",
                 "GANetic loss, Akhmedova & Körber, 2024: y_pred³ + √|3.985·y_real / y_pred| (protected).",
                 expression="y_pred**3 + sqrt(3.985*y_real/y_pred)"),
        Baseline("baikal", "classification",
                 "Baikal loss, Gonzalez & Miikkulainen, 2020 (GLO): -(log p - y/p), summed over classes.",
                 expression="y_real/y_pred - log(y_pred)"),
    ]
}


def get_baseline(name: str) -> Baseline:
    """The baseline called ``name``; ConfigError listing the known ones otherwise."""
    if name not in BASELINES:
        raise ConfigError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}")
    return BASELINES[name]


def baselines_for(problem: str) -> list[Baseline]:
    """Baselines meaningful for a problem type (``regression`` or ``classification``)."""
    return [b for b in BASELINES.values() if b.problem in (problem, "any")]
