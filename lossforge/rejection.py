"""Early rejection: cheap checks that spare training a candidate that obviously cannot train.

Each check runs in milliseconds on fixed probe data (seeded, so results are reproducible) and returns
a reason string, or ``None`` when the loss passes. A rejected candidate is recorded with its reason and the
worst fitness, never trained. A suite with several problem types rejects a loss only when it fails the
checks of every problem type (a loss meant for classification need not regress).
"""

from __future__ import annotations

import torch

from lossforge.expression import LossExpression
from lossforge.loss import SymbolicLoss
from lossforge.tasks.base import EXPLODING_GRAD_NORM

PROBE_SIZE = 128
DESCENT_STEPS = 60


def _probe_generator() -> torch.Generator:
    return torch.Generator().manual_seed(20240917)


def symbolic_reason(expression: LossExpression) -> str | None:
    """Reject losses that cannot depend on both the prediction and the target."""
    if "y_pred" not in expression.variables:
        return "does not depend on y_pred (no gradient to train with)"
    if "y_real" not in expression.variables:
        return "does not depend on y_real (ignores the targets)"
    return None


def _probe(problem: str, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    if problem == "classification":
        logits = torch.randn(PROBE_SIZE, 10, generator=gen) * 2
        target = torch.randint(0, 10, (PROBE_SIZE,), generator=gen)
        return logits, target
    return torch.randn(PROBE_SIZE, generator=gen) * 1.5, torch.randn(PROBE_SIZE, generator=gen) * 1.5


def _progress(problem: str, pred: torch.Tensor, target: torch.Tensor) -> float:
    """Higher is closer to the targets: minus mean absolute error, or mean true-class probability."""
    with torch.no_grad():
        if problem == "classification":
            return torch.softmax(pred, 1).gather(1, target[:, None]).mean().item()
        return -(pred - target).abs().mean().item()


def numeric_reason(expression: LossExpression, problem: str) -> str | None:
    """Probe checks for one problem type: finite values, a finite and non-exploding gradient with respect
    to the prediction, and a short optimisation of the predictions themselves moving them to the targets."""
    loss = SymbolicLoss(expression, reduction="none", problem=problem)
    gen = _probe_generator()
    pred0, target = _probe(problem, gen)
    pred = pred0.clone().requires_grad_(True)
    values = loss(pred, target)
    if not torch.isfinite(values).all():
        return "not finite on probe inputs"
    values.mean().backward()
    grad = pred.grad
    if grad is None or not torch.isfinite(grad).all():
        return "NaN or infinite gradient on probe inputs"
    if grad.abs().max().item() == 0.0:
        return "no gradient with respect to y_pred on probe inputs"
    if grad.norm().item() > EXPLODING_GRAD_NORM:
        return f"exploding gradient on probe inputs (norm {grad.norm().item():.3g})"
    pred = pred0.clone().requires_grad_(True)
    opt = torch.optim.Adam([pred], lr=0.05)
    before = _progress(problem, pred, target)
    for _ in range(DESCENT_STEPS):
        opt.zero_grad()
        value = loss(pred, target).mean()
        if not torch.isfinite(value):
            return "loss turns non-finite while minimising it on probe inputs"
        value.backward()
        opt.step()
    after = _progress(problem, pred, target)
    if not after > before + 0.05 * abs(before) + 1e-3:
        return "minimising it does not move predictions towards the targets"
    return None


def rejection_reason(expression: LossExpression, problems: set[str] | list[str]) -> str | None:
    """``None`` if the loss may be trained on a suite with these problem types, else why not."""
    reason = symbolic_reason(expression)
    if reason is not None:
        return reason
    reasons = []
    for problem in sorted(problems):
        try:
            reason = numeric_reason(expression, problem)
        except (RuntimeError, ValueError, OverflowError, ZeroDivisionError) as exc:
            reason = f"raised {type(exc).__name__} on probe inputs: {exc}"
        if reason is None:
            return None
        reasons.append(reason if len(problems) == 1 else f"{problem}: {reason}")
    return "; ".join(reasons)
