"""Early rejection and behavioural fingerprints: cheap checks on fixed probe data before any training.

Each check runs in milliseconds on fixed probe data (seeded, so results are reproducible) and returns
a reason string, or ``None`` when the loss passes. A rejected candidate is recorded with its reason and the
worst fitness, never trained. A suite with several problem types rejects a loss only when it fails the
checks of every problem type (a loss meant for classification need not regress).

The same probe gives a **fingerprint**: a hash of the loss's gradient with respect to the prediction on
the probe inputs (rounded to 6 significant digits). Training only ever sees that gradient, so two losses
with equal gradients everywhere train identically (``L`` and ``L + 1``, ``log(y_pred**2)`` and
``2*log(y_pred)``); losses whose fingerprints agree are scored once. The probe covers the range the tasks
use (standardised regression values, softmax probabilities from logits of a few units).

With ``scale_free`` (a suite whose tasks all train with Adam, :attr:`~lossforge.scoring.Suite.scale_free`)
the fingerprint is of the gradient divided by its largest entry, computed in float64 so that ``c * L`` and
``L`` round alike: Adam's steps do not change when the loss is multiplied by ``c > 0``, so ``0.74 * GCE``
is GCE for such a suite and is scored once, not trained again under another name.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import torch

from lossforge.expression import LossExpression
from lossforge.loss import SymbolicLoss
from lossforge.training import EXPLODING_GRAD_NORM

PROBE_SIZE = 128
#: Classes of the classification probe by default (any count works: the probe checks the loss's shape, and
#: callers that know their data's class count may pass it).
PROBE_CLASSES = 10
DESCENT_STEPS = 30


def _probe_generator() -> torch.Generator:
    return torch.Generator().manual_seed(20240917)


def symbolic_reason(expression: LossExpression) -> str | None:
    """Reject losses that cannot depend on both the prediction and the target, or whose constants fold
    beyond the constant limit."""
    if expression.constant_problem is not None:
        return expression.constant_problem
    if "y_pred" not in expression.variables:
        return "does not depend on y_pred (no gradient to train with)"
    if "y_real" not in expression.variables:
        return "does not depend on y_real (ignores the targets)"
    return None


def probe_inputs(problem: str, n_classes: int = PROBE_CLASSES) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed probe's predictions (logits for classification) and targets; the same on every call."""
    return _probe(problem, _probe_generator(), n_classes)


def _probe(problem: str, gen: torch.Generator, n_classes: int = PROBE_CLASSES) -> tuple[torch.Tensor, torch.Tensor]:
    if problem == "classification":
        logits = torch.randn(PROBE_SIZE, n_classes, generator=gen) * 2
        target = torch.randint(0, n_classes, (PROBE_SIZE,), generator=gen)
        return logits, target
    return torch.randn(PROBE_SIZE, generator=gen) * 1.5, torch.randn(PROBE_SIZE, generator=gen) * 1.5


def _progress(problem: str, pred: torch.Tensor, target: torch.Tensor) -> float:
    """Higher is closer to the targets: minus mean absolute error, or mean true-class probability."""
    with torch.no_grad():
        if problem == "classification":
            return torch.softmax(pred, 1).gather(1, target[:, None]).mean().item()
        return -(pred - target).abs().mean().item()


@dataclass(frozen=True)
class Probe:
    """Outcome of probing a loss: why it is rejected (or None), and its gradient fingerprint."""

    reason: str | None
    fingerprint: str | None = None


def _fingerprint(grad: torch.Tensor) -> str:
    text = ",".join(f"{v:.6g}" for v in grad.detach().double().flatten().tolist())
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _unit_gradient(loss: SymbolicLoss, pred0: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
    """The gradient of the mean loss at ``pred0`` in float64, divided by its largest magnitude (so a positive
    factor on the loss leaves it unchanged to float64 rounding); None where it is not finite."""
    pred = pred0.double().requires_grad_(True)
    loss(pred, target if not target.is_floating_point() else target.double()).mean().backward()
    grad = pred.grad
    if grad is None or not bool(torch.isfinite(grad).all()) or not bool(grad.abs().max() > 0):
        return None
    return grad / grad.abs().max()


def numeric_probe(expression: LossExpression, problem: str, n_classes: int = PROBE_CLASSES,
                  scale_free: bool = False) -> Probe:
    """Probe checks for one problem type: finite values, a finite and non-exploding gradient with respect
    to the prediction, and a short optimisation of the predictions themselves moving them to the targets.
    ``scale_free``: the fingerprint ignores a positive factor on the loss (module docstring)."""
    loss = SymbolicLoss(expression, reduction="none", problem=problem)
    pred0, target = probe_inputs(problem, n_classes)
    pred = pred0.clone().requires_grad_(True)
    values = loss(pred, target)
    if not torch.isfinite(values).all():
        return Probe("not finite on probe inputs")
    values.mean().backward()
    grad = pred.grad
    if grad is None or not torch.isfinite(grad).all():
        return Probe("NaN or infinite gradient on probe inputs")
    if grad.abs().max().item() == 0.0:
        return Probe("no gradient with respect to y_pred on probe inputs")
    if grad.norm().item() > EXPLODING_GRAD_NORM:
        return Probe(f"exploding gradient on probe inputs (norm {grad.norm().item():.3g})")
    unit = _unit_gradient(loss, pred0, target) if scale_free else None
    fingerprint = _fingerprint(grad) if unit is None else "unit:" + _fingerprint(unit)
    pred = pred0.clone().requires_grad_(True)
    opt = torch.optim.Adam([pred], lr=0.1)
    before = _progress(problem, pred, target)
    for _ in range(DESCENT_STEPS):
        opt.zero_grad()
        value = loss(pred, target).mean()
        if not torch.isfinite(value):
            return Probe("loss turns non-finite while minimising it on probe inputs")
        value.backward()
        opt.step()
    after = _progress(problem, pred, target)
    if not after > before + 0.05 * abs(before) + 1e-3:
        return Probe("minimising it does not move predictions towards the targets")
    return Probe(None, fingerprint)


def _classification_probe(expression: LossExpression, counts: tuple[int, ...], scale_free: bool = False) -> Probe:
    """The classification probe at every class count of the suite: the loss is trained on each, so it must
    pass each (a loss fine at 10 classes can blow up at 2); one count keeps the one-count fingerprint."""
    prints = []
    for n in counts:
        result = numeric_probe(expression, "classification", n, scale_free)
        if result.reason is not None:
            return Probe(result.reason if len(counts) == 1 else f"at {n} classes: {result.reason}")
        prints.append(f"{n}:{result.fingerprint}")
    if len(counts) == 1:
        return result
    return Probe(None, hashlib.sha256("|".join(prints).encode()).hexdigest()[:16])


def probe(expression: LossExpression, problems: set[str] | list[str],
          n_classes: int | Sequence[int] = PROBE_CLASSES, scale_free: bool = False) -> Probe:
    """Probe a loss for a suite with these problem types: rejected only if every problem type rejects it;
    the fingerprint covers every problem type it passes. ``n_classes``: the suite's class count(s)
    (:attr:`Suite.probe_classes`); classification must pass at each. ``scale_free``: the fingerprint
    ignores a positive factor on the loss (module docstring)."""
    reason = symbolic_reason(expression)
    if reason is not None:
        return Probe(reason)
    counts = (n_classes,) if isinstance(n_classes, int) else tuple(n_classes)
    reasons, prints = [], []
    for problem in sorted(problems):
        try:
            if problem == "classification":
                result = _classification_probe(expression, counts, scale_free)
            else:
                result = numeric_probe(expression, problem, scale_free=scale_free)
        except (RuntimeError, ValueError, OverflowError, ZeroDivisionError, TypeError) as exc:
            result = Probe(f"raised {type(exc).__name__} on probe inputs: {exc}")
        if result.reason is None:
            prints.append(f"{problem}:{result.fingerprint}")
        else:
            reasons.append(result.reason if len(problems) == 1 else f"{problem}: {result.reason}")
            prints.append(f"{problem}:rejected")
    if len(reasons) == len(problems):
        return Probe("; ".join(reasons))
    return Probe(None, hashlib.sha256("|".join(prints).encode()).hexdigest()[:16])


def rejection_reason(expression: LossExpression, problems: set[str] | list[str],
                     n_classes: int | Sequence[int] = PROBE_CLASSES) -> str | None:
    """``None`` if the loss may be trained on a suite with these problem types, else why not."""
    return probe(expression, problems, n_classes).reason
