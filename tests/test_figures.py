"""Figures that tell the truth: shapes over many targets (not one fixed y_real), formulas in the legends,
per-curve scaling or log axes, integer generation ticks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import lossforge
from lossforge.baselines import get_baseline
from lossforge.diagnostics import REGRESSION_TARGETS, curves_figure, probability_band, residual_band
from lossforge.loss import SymbolicLoss
from lossforge.report import _plot_fitness, _plot_shapes, _read_run

REPO = Path(__file__).resolve().parents[1]


def _per_sample(text: str, problem: str) -> torch.nn.Module:
    return SymbolicLoss(text, reduction="none", problem=problem)


def test_residual_band_shows_what_a_fixed_target_hides() -> None:
    r = torch.linspace(-3, 3, 61, dtype=torch.float64)
    mean, low, high = residual_band(_per_sample("(y_pred - y_real)**2", "regression"), r)
    assert torch.allclose(mean, r**2) and torch.allclose(low, high)  # a loss of the residual alone
    # sqrt(y_pred*y_real) is flat in the residual at y_real = 0, yet varies with it at other targets
    loss = _per_sample("sqrt(y_pred*y_real)", "regression")
    at_zero = loss(r, torch.zeros_like(r))
    assert float(at_zero.max() - at_zero.min()) < 1e-3
    mean, low, high = residual_band(loss, r)
    assert float(mean.max() - mean.min()) > 0.5 and float((high - low).max()) > 1.0
    for y in (float(REGRESSION_TARGETS[0]), float(REGRESSION_TARGETS[-1])):  # each target lies in the band
        at_y = float(loss(torch.tensor([y + 3.0], dtype=torch.float64), torch.tensor([y], dtype=torch.float64))[0])
        assert float(low[-1]) - 1e-12 <= at_y <= float(high[-1]) + 1e-12


def test_probability_band_spreads_only_for_losses_that_look_at_the_other_classes() -> None:
    p = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    ce = get_baseline("cross_entropy").make("classification")
    mid, low, high = probability_band(ce, p, 10)
    assert torch.allclose(mid, -torch.log(p), atol=1e-6) and torch.allclose(low, high, atol=1e-6)
    squares = _per_sample("y_pred**2", "classification")  # sum_c p_c^2 depends on how the rest is shared
    mid, low, high = probability_band(squares, p, 10)
    assert bool((high - low > 1e-3).any()) and bool((low <= mid + 1e-12).all() and (mid <= high + 1e-12).all())
    _, low2, high2 = probability_band(squares, p, 2)  # two classes: one way to share the rest
    assert torch.allclose(low2, high2)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fig") / "run.db"
    lossforge.search(run=path, suite=str(REPO / "tests/data/tiny_suite.toml"), population=6, generations=3,
                     chunk_size=4, jobs=1, executor="serial", quiet=True)
    return path


def test_report_figures_label_formulas_and_use_integer_generations(tiny_run: Path, tmp_path: Path) -> None:
    run = _read_run(tiny_run, 3)
    fig = _plot_fitness(run, tmp_path / "fitness.png")
    ticks = [t for t in fig.axes[0].get_xticks() if 0 <= t <= 3]
    assert ticks and all(float(t).is_integer() for t in ticks)
    fig = _plot_shapes(run, tmp_path / "shapes.png")
    labels = fig.axes[0].get_legend_handles_labels()[1]
    best = [item.record.formula for item in run.best[:3]]
    assert all(any(f[:40] in label for label in labels) for f in best)
    assert any(label.startswith("mse") for label in labels)
    scaled = [line.get_ydata() for line in fig.axes[0].get_lines()]
    assert all(min(y) >= -1e-9 and max(y) <= 1 + 1e-9 for y in scaled)  # each curve and its band in [0, 1]


def test_diagnose_figure_labels_formulas_and_uses_log_axes_for_classification() -> None:
    items = [("loss", lossforge.LossExpression.parse("0.5*y_real*log(y_pred)*(0-1)")),
             ("cross_entropy", lossforge.LossExpression.parse("-y_real*log(y_pred)"))]
    fig = curves_figure(items, "classification")
    value_ax, grad_ax = fig.axes
    labels = value_ax.get_legend_handles_labels()[1]
    assert any(items[0][1].formula() in label for label in labels)
    assert value_ax.get_xscale() == "log" and grad_ax.get_yscale() == "log"
    for line in value_ax.get_lines():  # per-curve scaling: every curve spans [0, 1]
        assert min(line.get_ydata()) == pytest.approx(0, abs=1e-9)
        assert max(line.get_ydata()) == pytest.approx(1, abs=1e-9)
    fig = curves_figure([("mse", "(y_pred - y_real)**2"), ("mae", "sqrt((y_pred - y_real)**2)")], "regression")
    for line in fig.axes[0].get_lines():
        assert min(line.get_ydata()) == pytest.approx(0, abs=1e-6)
        assert max(line.get_ydata()) == pytest.approx(1, abs=1e-9)
