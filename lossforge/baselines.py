"""Known losses, written in the search language wherever it can express them, plain torch otherwise.

Every baseline is usable wherever a candidate is: scored on a suite, shown beside evolved losses, or put
in the initial population (the expression ones). Classification expressions follow the
:class:`~lossforge.loss.SymbolicLoss` convention: ``y_pred`` is a softmax probability, ``y_real`` the one-hot
target, and the per-sample loss sums the expression over classes (so ``-y_real*log(y_pred)`` is
cross-entropy).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Callable, Literal

import torch
from torch import nn

from lossforge.errors import ConfigError, LossforgeError
from lossforge.expression import LossExpression
from lossforge.loss import SymbolicLoss, class_probabilities
from lossforge.rejection import probe_inputs

Problem = Literal["regression", "classification", "any"]

#: Baselines scored on every run's suite and shown beside the evolved losses (search, score, report): the
#: strongest hand-designed losses for each problem.
DISPLAY_BASELINES = {"regression": ("mse", "huber", "mae"),
                     "classification": ("cross_entropy", "gce", "mae", "sce", "nce_rce", "nce_agce", "anl_ce")}


@dataclass(frozen=True)
class Baseline:
    """A named known loss: an expression in the search language, or a torch factory.

    ``params``: a factory baseline's hyper-parameters at the authors' setting, as ``(name, value)`` pairs;
    they are what ``lossforge baselines --tune`` tunes (an expression baseline's are its constants).
    """

    name: str
    problem: Problem
    source: str
    expression: str | None = None
    factory: Callable[..., nn.Module] | None = None
    params: tuple[tuple[str, float], ...] = ()

    def make(self, problem: str) -> nn.Module:
        """A per-sample (``reduction='none'``) loss module for ``problem``."""
        if self.expression is not None:
            return SymbolicLoss(self.expression, reduction="none", problem=problem)
        assert self.factory is not None
        return self.factory(problem, **dict(self.params))

    @property
    def tokens(self) -> tuple | None:
        """Prefix tokens of the expression form (None for torch-only baselines)."""
        return LossExpression.parse(self.expression).tokens if self.expression else None

    def tunable(self) -> "LossExpression | BaselineSetting":
        """What tuning varies: the expression (its constants), or the factory's hyper-parameters."""
        if self.expression is not None:
            return LossExpression.parse(self.expression)
        return BaselineSetting(self.name, tuple(k for k, _ in self.params), tuple(v for _, v in self.params))


@dataclass(frozen=True)
class BaselineSetting:
    """A factory baseline at given hyper-parameters: the tunable form of a torch baseline.

    It offers what constant tuning needs of a loss (``constants``, ``with_constants``, ``formula``) and
    ``spec``, the plain-data loss spec ``"name(k=v, ...)"`` that :func:`get_baseline` reads back.
    """

    name: str
    keys: tuple[str, ...]
    values: tuple[float, ...]

    @property
    def constants(self) -> list[float]:
        return list(self.values)

    def with_constants(self, values: list[float]) -> "BaselineSetting":
        if len(values) != len(self.keys):
            raise ConfigError(f"{self.name} takes {len(self.keys)} hyper-parameters, got {len(values)}")
        return BaselineSetting(self.name, self.keys, tuple(float(v) for v in values))

    @property
    def spec(self) -> str:
        if not self.keys:  # "huber()" is refused by get_baseline: tuning scored it as a failure, fitness 0.0
            return self.name
        return f"{self.name}(" + ", ".join(f"{k}={v!r}" for k, v in zip(self.keys, self.values)) + ")"

    def formula(self) -> str:
        if not self.keys:
            return self.name
        return f"{self.name}(" + ", ".join(f"{k}={v:.4g}" for k, v in zip(self.keys, self.values)) + ")"


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
    """NCE + RCE (Ma et al., ICML 2020, "Normalized Loss Functions for Deep Learning with Noisy Labels"),
    at the APL code's MNIST setting α = 1, β = 10 (HanxunH/Active-Passive-Losses,
    configs/mnist/sym/nce+rce.yaml), RCE as that code computes it: log 0 := log(1e-4) and p clamped at 1e-7.
    NCE divides by a sum over classes, which the elementwise language cannot express."""

    def __init__(self, problem: str = "classification", alpha: float = 1.0, beta: float = 10.0,
                 log_zero: float = math.log(1e-4), min_prob: float = 1e-7) -> None:
        super().__init__()
        self.alpha, self.beta, self.log_zero, self.min_prob = alpha, beta, log_zero, min_prob

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs, y = class_probabilities(input, target)
        rce = -(probs.clamp(min=self.min_prob, max=1.0) * torch.clamp(torch.log(y), min=self.log_zero)).sum(1)
        return self.alpha * normalized_cross_entropy(input, y) + self.beta * rce


def normalized_cross_entropy(input: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """NCE = -Σ y_c log p_c / -Σ_k log p_k (Ma et al., 2020), per sample, from logits and a (soft) target."""
    log_p = torch.log_softmax(input, dim=1)
    return (-(y * log_p).sum(1)) / (-log_p.sum(1))


class ANLCELoss(nn.Module):
    """ANL-CE (Ye et al., NeurIPS 2023, "Active Negative Loss Functions for Learning with Noisy Labels"):
    α·NCE + β·NNCE, NNCE = 1 - z_y / Σ_k z_k with z_k = A + log max(p_k, p_min), A = -log p_min, p_min = 1e-7
    (Virusdoll/Active-Negative-Loss, loss.py NormalizedNegativeCrossEntropy), at the authors' MNIST setting
    α = β = 1 (config/mnist_anl_ce.json). That config also adds δ·‖θ‖₁ with δ = 1e-6 *in place of* weight
    decay (weight_decay 0): a penalty on the model's weights, not a function of the predictions, so it is not
    part of this loss; lossforge trains every loss of a task with the same optimiser and regularisation."""

    def __init__(self, problem: str = "classification", alpha: float = 1.0, beta: float = 1.0,
                 min_prob: float = 1e-7) -> None:
        super().__init__()
        self.alpha, self.beta, self.min_prob = alpha, beta, min_prob

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _, y = class_probabilities(input, target)
        # log_softmax clamped at log p_min: the authors' log(clamp(softmax)) without its rounding near p = 1
        log_min = math.log(self.min_prob)
        z = -log_min + torch.log_softmax(input, dim=1).clamp(min=log_min, max=0.0)
        nnce = 1 - (y * z).sum(1) / z.sum(1)
        return self.alpha * normalized_cross_entropy(input, y) + self.beta * nnce


class NCEAGCELoss(nn.Module):
    """NCE + AGCE (Zhou et al., ICML 2021, "Asymmetric Loss Functions for Learning with Noisy Labels"):
    α·NCE + β·((a + 1)^q - (a + p_y)^q)/q (hitcszx/ALFs, lnl/losses.py NCEandAGCE), at the authors' CIFAR-10
    setting α = 1, β = 4, a = 6, q = 1.5 (lnl/config.py): their MNIST setting sets α = 0, which is AGCE alone
    (the ``agce`` baseline)."""

    def __init__(self, problem: str = "classification", alpha: float = 1.0, beta: float = 4.0, a: float = 6.0,
                 q: float = 1.5) -> None:
        super().__init__()
        self.alpha, self.beta, self.a, self.q = alpha, beta, a, q

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs, y = class_probabilities(input, target)
        p_y = (y * probs).sum(1)
        agce = ((self.a + 1) ** self.q - (self.a + p_y) ** self.q) / self.q
        return self.alpha * normalized_cross_entropy(input, y) + self.beta * agce


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


def _first_sentence(cls: type) -> str:
    return " ".join((cls.__doc__ or "").split("\n\n")[0].split())


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
        # SCE at the APL code's MNIST setting (configs/mnist/sym/sce.yaml: α = 0.01, β = 1). RCE's log 0 is
        # the code's log(1e-4) = -9.21 (one-hot clamped at 1e-4), not the paper's A = -4: the published
        # numbers and the per-data-set α, β come from the code, so its A is the one they were tuned with.
        Baseline("sce", "classification",
                 "Symmetric cross-entropy, Wang et al., ICCV 2019: α·CE + β·RCE, MNIST α = 0.01, β = 1, "
                 "log 0 := log(1e-4) as in the authors' code (RCE = 9.21(1 - p_y)).",
                 expression=f"-0.01*y_real*log(y_pred) + {-math.log(1e-4)!r}*y_real*(1 - y_pred)"),
        Baseline("nce_rce", "classification", _first_sentence(NCERCELoss), factory=NCERCELoss,
                 params=(("alpha", 1.0), ("beta", 10.0))),
        Baseline("anl_ce", "classification", _first_sentence(ANLCELoss), factory=ANLCELoss,
                 params=(("alpha", 1.0), ("beta", 1.0))),
        Baseline("nce_agce", "classification", _first_sentence(NCEAGCELoss), factory=NCEAGCELoss,
                 params=(("alpha", 1.0), ("beta", 4.0), ("a", 6.0), ("q", 1.5))),
        # AGCE/AUL at the ALFs MNIST settings (lnl/config.py); (a + 1)^q and (a - 1)^q are written out
        # because the language has integer powers only (x^q = exp(q·log x), x > 0 here).
        Baseline("agce", "classification",
                 "AGCE, Zhou et al., ICML 2021 (hitcszx/ALFs): ((a + 1)^q - (a + p_y)^q)/q, MNIST a = 4, q = 0.2.",
                 expression=f"y_real*({5 ** 0.2!r} - exp(0.2*log(4 + y_pred)))/0.2"),
        Baseline("aul", "classification",
                 "AUL, Zhou et al., ICML 2021 (hitcszx/ALFs): ((a - p_y)^q - (a - 1)^q)/q, MNIST a = 3, q = 0.1.",
                 expression=f"y_real*(exp(0.1*log(3 - y_pred)) - {2 ** 0.1!r})/0.1"),
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


_SETTING = re.compile(r"^([a-z_0-9]+)\((.*)\)$")
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


def get_baseline(name: str) -> Baseline:
    """The baseline called ``name``; ConfigError listing the known ones otherwise.

    ``name(k=v, ...)`` (a :attr:`BaselineSetting.spec`) is a factory baseline at other hyper-parameters.
    """
    if not isinstance(name, str):  # was an AttributeError ('int' object has no attribute 'strip')
        raise ConfigError(f"a baseline is named by a string, got {name!r}; known: {', '.join(BASELINES)}")
    match = _SETTING.match(name.strip())
    if match is None:
        if name not in BASELINES:
            raise ConfigError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}")
        return BASELINES[name]
    base = get_baseline(match.group(1))
    known = dict(base.params)
    if not known:
        raise ConfigError(f"baseline {base.name!r} has no hyper-parameters to set; write {base.name!r} alone")
    for item in filter(None, (s.strip() for s in match.group(2).split(","))):
        key, _, value = (s.strip() for s in item.partition("="))
        if key not in known:
            raise ConfigError(f"baseline {base.name} has no hyper-parameter {key!r}; known: {', '.join(known)}")
        if not re.fullmatch(_NUMBER, value) or not math.isfinite(float(value)):
            raise ConfigError(f"{base.name}: {key} must be a finite number; got {value!r}")
        known[key] = float(value)
    return replace(base, params=tuple(known.items()))


def baselines_for(problem: str) -> list[Baseline]:
    """Baselines meaningful for a problem type (``regression`` or ``classification``)."""
    return [b for b in BASELINES.values() if b.problem in (problem, "any")]


#: Largest relative residual of ``g - s * g_known`` (float64) at which two gradients count as one up to scale.
_SAME_TOLERANCE = 1e-6


def _probe_gradient(loss: nn.Module, problem: str, n_classes: int) -> torch.Tensor | None:
    """The mean loss's gradient with respect to the prediction (logits for classification) on the rejection
    probe's data in float64, flattened; None where it is not finite."""
    pred, target = probe_inputs(problem, n_classes)
    pred = pred.double().requires_grad_(True)
    target = target.double() if target.is_floating_point() else target
    try:
        loss.double()(pred, target).mean().backward()
    except (RuntimeError, ValueError, TypeError):
        return None
    grad = pred.grad
    return grad.flatten() if grad is not None and bool(torch.isfinite(grad).all()) else None


_KNOWN_GRADIENTS: dict[tuple[str, str, int], torch.Tensor | None] = {}


def known_loss_text(name: str, scale: float) -> str:
    """``gce`` or ``0.261 x gce``: what :func:`same_as_known` found, for tables and messages."""
    return name if abs(scale - 1) < 1e-6 else f"{scale:.3g} x {name}"


def stored_same_as_known(tree: object, problem: str | None, n_classes: int = 10) -> tuple[str, float] | None:
    """:func:`same_as_known` of a run file's stored tree, for the views (``show``, ``report``, the
    dashboard): None where the run has no single problem or the tree is invalid (a hand-edited row is listed
    with the others and refused where it is built)."""
    if problem is None:
        return None
    try:
        expression = LossExpression(tuple(tree))  # type: ignore[arg-type]
    except (LossforgeError, TypeError):
        return None
    return same_as_known(expression, problem, n_classes)


def same_as_known(expression: LossExpression, problem: str, n_classes: int = 10) -> tuple[str, float] | None:
    """``(name, scale)`` when ``expression`` trains as a known loss: its gradient is ``scale`` (> 0) times the
    baseline's at every point of a fixed probe (so it differs by a constant term and a positive factor at
    most, which Adam, the suites' optimizer, ignores up to its epsilon); None otherwise. A search that returns
    ``0.74*y_real*(1 - y_pred**0.7)`` has returned GCE; this says so."""
    grad = _probe_gradient(SymbolicLoss(expression, problem=problem), problem, n_classes)  # type: ignore[arg-type]
    if grad is None or not bool(grad.abs().max() > 0):
        return None
    for b in baselines_for(problem):
        key = (b.name, problem, n_classes)
        if key not in _KNOWN_GRADIENTS:
            _KNOWN_GRADIENTS[key] = _probe_gradient(b.make(problem), problem, n_classes)
        known = _KNOWN_GRADIENTS[key]
        if known is None or not bool(known.abs().max() > 0):
            continue
        scale = float(grad @ known / (known @ known))
        if scale > 0 and float((grad - scale * known).norm()) <= _SAME_TOLERANCE * float(grad.norm()):
            return b.name, scale
    return None
