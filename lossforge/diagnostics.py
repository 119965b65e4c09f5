"""Loss diagnostics: the properties that theory links to robustness, checked numerically.

For classification (per-sample loss ``Σ_c L(p_c, y_c)``):

* **bounded**: the loss levels off as the true-class probability goes to 0 (cross-entropy does not; MAE
  and GCE do), checked above the protected operators' clamps. Bounded losses limit how much a mislabelled sample can pull (Ghosh et al., 2017).
* **symmetric**: ``Σ_k loss(p, k)`` is the same for every probability vector ``p``: Ghosh et al. prove
  symmetric losses are tolerant to symmetric label noise below ``(C - 1) / C``.
* **monotone**: the loss decreases as the true-class probability increases (others equal).

For regression, as a function of the residual ``r = y_pred - y_real`` around targets -1, 0 and 1 (an evolved
loss need not depend on ``r`` alone): **bounded** as ``|r|`` grows (redescending losses ignore gross
outliers), **symmetric** (``L(r) = L(-r)``), **monotone** (non-decreasing in ``|r|``).

Each check evaluates the loss on fixed grids or seeded random points; tolerances are stated in the code.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from lossforge.atomic import write_atomic
from lossforge.expression import LossExpression
from lossforge.loss import SymbolicLoss

CLASSES = 10
# True-class probabilities down to 1e-5: below DIV_EPS (1e-6) the protected operators clamp, which would make
# any loss look bounded.
_P_GRID = torch.logspace(-5, 0, 200, dtype=torch.float64)
_R_GRID = torch.linspace(-50, 50, 2001, dtype=torch.float64)  # residual


@dataclass(frozen=True)
class Diagnosis:
    """Properties of one loss for one problem type."""

    name: str
    problem: str
    bounded: bool
    symmetric: bool
    monotone: bool

    def row(self) -> list[str]:
        """Table cells."""
        yes = lambda b: "yes" if b else "no"  # noqa: E731
        return [self.name, self.problem, yes(self.bounded), yes(self.symmetric), yes(self.monotone)]


def _class_loss_of_prob(loss: SymbolicLoss, p_true: torch.Tensor) -> torch.Tensor:
    """Per-sample loss when the true class (0) has probability ``p_true`` and the others share the rest."""
    rest = (1 - p_true) / (CLASSES - 1)
    probs = torch.cat([p_true[:, None], rest[:, None].expand(-1, CLASSES - 1)], dim=1)
    onehot = torch.zeros_like(probs)
    onehot[:, 0] = 1
    return loss.elementwise(probs, onehot).sum(1)


def curves(expression: LossExpression | str, problem: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x, value, gradient)``: loss and its derivative against the true-class probability
    (classification) or the residual (regression, ``y_real = 0``)."""
    loss = SymbolicLoss(expression, reduction="none", problem=problem)
    x = (_P_GRID if problem == "classification" else _R_GRID).clone().requires_grad_(True)
    if problem == "classification":
        values = _class_loss_of_prob(loss, x)
    else:
        values = loss.elementwise(x, torch.zeros_like(x))
    (grad,) = torch.autograd.grad(values.sum(), x)
    return x.detach(), values.detach(), grad


def diagnose(expression: LossExpression | str, problem: str, name: str | None = None) -> Diagnosis:
    """Check boundedness, symmetry and monotonicity of a loss (see module docstring)."""
    expr = LossExpression.coerce(expression)
    loss = SymbolicLoss(expr, reduction="none", problem=problem)
    x, values, _ = curves(expr, problem)
    finite = bool(torch.isfinite(values).all())
    scale = values.abs().max().clamp(min=1e-12)
    if problem == "classification":
        # bounded: growth between p = 1e-3 and p = 1e-5 within 2 % of the loss's range on the grid
        lo = _class_loss_of_prob(loss, torch.tensor([1e-3, 1e-5], dtype=torch.float64))
        bounded = finite and float((lo[1] - lo[0]).abs()) <= 0.02 * float(values.max() - values.min() + 1e-12)
        gen = torch.Generator().manual_seed(0)
        probs = torch.distributions.Dirichlet(torch.ones(CLASSES, dtype=torch.float64)).sample((256,))
        probs = probs[torch.randperm(256, generator=gen)]
        eye = torch.eye(CLASSES, dtype=torch.float64)
        sums = torch.stack([loss.elementwise(probs, eye[k].expand_as(probs)).sum(1) for k in range(CLASSES)]).sum(0)
        symmetric = bool(torch.isfinite(sums).all()) and float(sums.std() / sums.abs().mean().clamp(min=1e-12)) < 1e-3
        monotone = finite and bool((values[1:] - values[:-1] <= 1e-9 * scale).all())  # decreasing in p
    else:  # as a function of the residual, around several targets (a loss need not depend on r alone)
        bounded, symmetric, monotone = finite, finite, finite
        for y in (-1.0, 0.0, 1.0):
            real = torch.full_like(x, y)
            v = loss.elementwise(x + real, real)
            far = loss.elementwise(torch.tensor([1e3, 1e6], dtype=torch.float64) + y, torch.full((2,), y,
                                                                                                dtype=torch.float64))
            scale = v.abs().max().clamp(min=1e-12)
            bounded &= bool(torch.isfinite(far).all()) and float((far[1] - far[0]).abs()) <= 0.01 * float(
                far.abs().max() + 1e-12)
            symmetric &= bool(torch.allclose(v, v.flip(0), rtol=1e-6, atol=1e-9 * float(scale)))
            right, left = v[x >= 0], v[x <= 0].flip(0)  # both walk away from r = 0
            monotone &= bool((right[1:] - right[:-1] >= -1e-9 * scale).all())  # non-decreasing in |r|
            monotone &= bool((left[1:] - left[:-1] >= -1e-9 * scale).all())
    return Diagnosis(name or expr.formula(), problem, bounded, symmetric, monotone)


def plot_curves(items: Sequence[tuple[str, LossExpression | str]], problem: str, path: str | Path) -> Path:
    """PNG with the value and gradient curves of several losses side by side (each value curve scaled to
    [0, 1] so shapes compare; gradients scaled by their largest magnitude)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_v, ax_g) = plt.subplots(1, 2, figsize=(10, 4))
    for label, expr in items:
        x, v, g = curves(expr, problem)
        keep = torch.isfinite(v) & torch.isfinite(g)
        x, v, g = x[keep], v[keep], g[keep]
        if len(v) == 0:
            continue
        v = (v - v.min()) / (v.max() - v.min()).clamp(min=1e-12)
        g = g / g.abs().max().clamp(min=1e-12)
        ax_v.plot(x.numpy(), v.numpy(), label=label)
        ax_g.plot(x.numpy(), g.numpy(), label=label)
    xlabel = "probability of the true class" if problem == "classification" else "residual y_pred - y_real"
    for ax, title in ((ax_v, "loss (scaled to [0, 1])"), (ax_g, "gradient (scaled)")):
        ax.set_xlabel(xlabel)
        ax.set_title(title)
        if problem == "classification":
            ax.set_xscale("log")
        else:
            ax.set_xlim(-5, 5)
    ax_v.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    buffer = io.BytesIO()  # rendered in memory, written atomically (never a half-written file)
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    write_atomic(path, buffer.getvalue())
    return path
