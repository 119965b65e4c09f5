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
from typing import Any, Sequence

import torch

from lossforge.atomic import write_atomic
from lossforge.errors import ExportError
from lossforge.expression import LossExpression
from lossforge.loss import SymbolicLoss

#: Classes of the probability grids by default; ``diagnose(..., n_classes=C)`` checks another count.
CLASSES = 10
#: Targets around which regression shapes are drawn: a loss need not depend on the residual alone, so a
#: curve at one fixed ``y_real`` would misstate it (``sqrt(y_pred*y_real)`` is flat at ``y_real = 0``).
REGRESSION_TARGETS = torch.linspace(-2.0, 2.0, 41, dtype=torch.float64)
#: Draws of how the other classes share ``1 - p`` (classification shapes show the spread over them).
_REST_DRAWS = 32
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


def _class_loss_of_prob(loss: SymbolicLoss, p_true: torch.Tensor, n_classes: int = CLASSES) -> torch.Tensor:
    """Per-sample loss when the true class (0) has probability ``p_true`` and the others share the rest."""
    rest = (1 - p_true) / (n_classes - 1)
    probs = torch.cat([p_true[:, None], rest[:, None].expand(-1, n_classes - 1)], dim=1)
    onehot = torch.zeros_like(probs)
    onehot[:, 0] = 1
    return loss.elementwise(probs, onehot).sum(1)


def residual_band(loss: torch.nn.Module, residuals: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per-sample regression loss against the residual ``r``: ``(mean, low, high)`` over the targets
    :data:`REGRESSION_TARGETS` (``y_pred = y_real + r``); the band is zero-wide for a loss of ``r`` alone.
    ``loss`` is a per-sample module called as ``loss(y_pred, y_real)``."""
    real = REGRESSION_TARGETS.to(residuals.dtype)[:, None].expand(-1, len(residuals))
    values = loss((real + residuals[None, :]).reshape(-1), real.reshape(-1)).reshape(real.shape)
    return values.mean(0), values.amin(0), values.amax(0)


def probability_band(loss: torch.nn.Module, p_true: torch.Tensor, n_classes: int) -> tuple[torch.Tensor, ...]:
    """Per-sample classification loss against the true class's probability ``p``: ``(uniform, low, high)``
    where ``uniform`` has the other classes share ``1 - p`` equally and ``low``/``high`` span seeded random
    shares (Dirichlet) as well. ``loss`` is a per-sample module called as ``loss(logits, class_index)``."""
    gen = torch.Generator().manual_seed(0)
    shares = [torch.full((n_classes - 1,), 1.0 / (n_classes - 1), dtype=p_true.dtype)]
    if n_classes > 2:
        draws = -torch.log(torch.rand(_REST_DRAWS, n_classes - 1, dtype=torch.float64, generator=gen))
        shares += list((draws / draws.sum(1, keepdim=True)).to(p_true.dtype))  # Dirichlet(1, ..., 1)
    curves = []
    for share in shares:
        rest = (1.0 - p_true)[:, None] * share[None, :]
        probs = torch.cat([p_true[:, None], rest], dim=1).clamp(min=1e-300)
        curves.append(loss(torch.log(probs), torch.zeros(len(p_true), dtype=torch.long)))  # softmax(log q) = q
    stack = torch.stack(curves)
    return stack[0], stack.amin(0), stack.amax(0)


def curves(expression: LossExpression | str, problem: str, n_classes: int = CLASSES
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x, value, gradient)``: loss and its derivative against the true-class probability
    (classification) or the residual (regression, ``y_real = 0``)."""
    loss = SymbolicLoss(expression, reduction="none", problem=problem)
    x = (_P_GRID if problem == "classification" else _R_GRID).clone().requires_grad_(True)
    if problem == "classification":
        values = _class_loss_of_prob(loss, x, n_classes)
    else:
        values = loss.elementwise(x, torch.zeros_like(x))
    return x.detach(), values.detach(), _gradient(values, x)


def _gradient(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """d(values.sum())/dx; zero for a loss free of ``y_pred`` (``-y_real``), whose values have no graph to x."""
    if not values.requires_grad:
        return torch.zeros_like(x.detach())
    (grad,) = torch.autograd.grad(values.sum(), x, allow_unused=True)
    return torch.zeros_like(x.detach()) if grad is None else grad


def diagnose(expression: LossExpression | str, problem: str, name: str | None = None,
             n_classes: int = CLASSES) -> Diagnosis:
    """Check boundedness, symmetry and monotonicity of a loss (see module docstring) for ``n_classes`` classes."""
    expr = LossExpression.coerce(expression)
    loss = SymbolicLoss(expr, reduction="none", problem=problem)
    x, values, _ = curves(expr, problem, n_classes)
    finite = bool(torch.isfinite(values).all())
    scale = values.abs().max().clamp(min=1e-12)
    if problem == "classification":
        # bounded: growth between p = 1e-3 and p = 1e-5 within 2 % of the loss's range on the grid
        lo = _class_loss_of_prob(loss, torch.tensor([1e-3, 1e-5], dtype=torch.float64), n_classes)
        bounded = finite and float((lo[1] - lo[0]).abs()) <= 0.02 * float(values.max() - values.min() + 1e-12)
        gen = torch.Generator().manual_seed(0)
        probs = torch.distributions.Dirichlet(torch.ones(n_classes, dtype=torch.float64)).sample((256,))
        probs = probs[torch.randperm(256, generator=gen)]
        eye = torch.eye(n_classes, dtype=torch.float64)
        sums = torch.stack([loss.elementwise(probs, eye[k].expand_as(probs)).sum(1) for k in range(n_classes)]).sum(0)
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
    """Write :func:`curves_figure` as a PNG at ``path`` (a name ending .png, or with no suffix)."""
    import matplotlib.pyplot as plt

    path = Path(path)
    if path.suffix.lower() not in ("", ".png"):  # PNG bytes under a .svg or .pdf name open as a broken file
        raise ExportError(f"the plot is a PNG image; give a path ending .png, not {path.name!r}")
    fig = curves_figure(items, problem)
    buffer = io.BytesIO()  # rendered in memory, written atomically (never a half-written file)
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    write_atomic(path, buffer.getvalue())
    return path


def curves_figure(items: Sequence[tuple[str, LossExpression | str]], problem: str) -> Any:
    """A figure with the value and gradient curves of several losses side by side, each labelled with its
    formula. Values are min-max scaled per curve over the plotted range (raw range in the legend) so that
    shapes of very different scales compare. Classification: against the true-class probability on a log
    axis (others sharing the rest equally), gradient magnitudes unscaled on a log axis. Regression: gradients
    divided by their largest magnitude in the plotted range. Regression: against the residual, averaged over targets in [-2, 2], the band showing the
    spread over the targets (a loss need not depend on the residual alone).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = ("-", "--", "-.", ":")
    fig, (ax_v, ax_g) = plt.subplots(1, 2, figsize=(12, 4.6))
    for i, (label, expr) in enumerate(items):
        expr = LossExpression.coerce(expr)
        loss = SymbolicLoss(expr, reduction="none", problem=problem)
        if problem == "classification":
            x = torch.logspace(-4, -1e-3, 240, dtype=torch.float64).requires_grad_(True)  # p < 1: MAE has a kink there
            v = _class_loss_of_prob(loss, x)
            low = high = None
        else:
            x = torch.linspace(-5, 5, 241, dtype=torch.float64).requires_grad_(True)
            v, low, high = residual_band(lambda a, b: loss.elementwise(a, b), x)
        g = _gradient(v, x)
        x, v, g = x.detach(), v.detach(), g.detach()
        keep = torch.isfinite(v) & torch.isfinite(g)
        if not bool(keep.any()):
            continue
        lows, highs = (v, v) if low is None or high is None else (low.detach(), high.detach())
        keep &= torch.isfinite(lows) & torch.isfinite(highs)
        if not bool(keep.any()):
            continue
        v_lo, v_hi = float(lows[keep].min()), float(highs[keep].max())  # the band fits in [0, 1] too
        span = max(v_hi - v_lo, 1e-12)
        g_max = float(g[keep].abs().max().clamp(min=1e-12))
        text = f"{label}: {expr.formula()}"
        text = text if len(text) <= 60 else text[:59] + "…"
        style = {"linestyle": styles[i % len(styles)], "linewidth": 2.4 if i == 0 else 1.5, "color": f"C{i}"}
        xs = x[keep].numpy()
        line, = ax_v.plot(xs, ((v[keep] - v_lo) / span).numpy(), label=f"{text}  [{v_lo:.3g}, {v_hi:.3g}]",
                          **style)
        if bool(((highs - lows)[keep] > 1e-9 * span).any()):
            ax_v.fill_between(xs, ((lows[keep] - v_lo) / span).numpy(), ((highs[keep] - v_lo) / span).numpy(),
                              color=line.get_color(), alpha=0.15)
        if problem == "classification":  # 1/p-like gradients span decades: magnitudes on a log axis, unscaled
            ax_g.plot(xs, g[keep].abs().clamp(min=1e-12).numpy(), label=text, **style)
        else:
            ax_g.plot(xs, (g[keep] / g_max).numpy(), label=text, **style)
    xlabel = "probability of the true class (log scale)" if problem == "classification" else \
        "residual y_pred - y_real (mean over y_real in [-2, 2]; band: spread)"
    g_title = ("|d loss / d p| (log scale, not rescaled)" if problem == "classification"
               else "gradient d loss / d r, divided by each curve's largest |value|")
    for ax, title in ((ax_v, "loss, min-max scaled per curve [raw range]"), (ax_g, g_title)):
        ax.set_xlabel(xlabel)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        if problem == "classification":
            ax.set_xscale("log")
    if problem == "classification":
        ax_g.set_yscale("log")
    ax_v.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16))
    ax_g.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16))
    return fig
