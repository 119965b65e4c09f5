"""Reports of a run: PNG plots and a Markdown summary, made from the run file opened read-only.

:func:`write_report` writes into ``out_dir``:

* ``report_fitness.png`` - best and median fitness per generation, with the baselines' fitness;
* ``report_pareto.png`` - complexity against fitness of every complete candidate, Pareto front highlighted;
* ``report_shapes.png`` - the shapes of the best losses next to reference losses (regression: loss against
  the residual, averaged over targets in [-2, 2] with the spread over them shaded, since a loss need not
  depend on the residual alone; classification: per-sample loss against the predicted probability of the
  true class, the other classes sharing the rest equally, shaded: other ways of sharing it);
* ``report_tasks.png`` - per-task normalised scores of the best losses next to the stored baselines;
* ``report.md`` - the summary linking them, with the hall of fame and baseline tables.

The losses are ranked as ``lossforge show`` ranks them (:mod:`lossforge.ranking`: validated losses first).
Fitness and normalised scores are higher-is-better; 1.0 is "as good as the task's reference loss".
"""

from __future__ import annotations

import io
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torch import nn

from lossforge import markdown
from lossforge.atomic import check_output, write_atomic
from lossforge.baselines import DISPLAY_BASELINES, get_baseline, known_loss_text, stored_same_as_known
from lossforge.diagnostics import probability_band, residual_band
from lossforge.errors import ExportError, LossforgeError, RunError
from lossforge.expression import LossExpression
from lossforge.loss import SymbolicLoss
from lossforge.ranking import Ranked, baseline_rows, generation_stats, pareto_front, ranking, suite_of
from lossforge.scoring import Suite
from lossforge.runfile import CandidateRecord, CandidateState, RunStore, RunSummary

__all__ = ["pareto_front", "write_report"]

DPI = 110
#: How many of the best losses the shape and per-task plots draw (the hall of fame table lists ``top``).
PLOTTED = 3
#: Legend labels longer than this are cut (the Markdown tables carry the full formulas).
LABEL_CHARS = 48
_BASELINE_STYLE = {"linestyle": "--", "linewidth": 1.4}
#: Line styles of the best losses' shapes: distinct, as near-identical losses draw the same curve.
_BEST_STYLES = ({"linewidth": 2.6}, {"linestyle": "-.", "linewidth": 1.8}, {"linestyle": ":", "linewidth": 2.0})
#: Legends go beside the axes: inside they hide curves (savefig's tight bounding box keeps them).
_LEGEND = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "fontsize": 8}


@dataclass
class _Run:
    """Everything a report needs, read from the run file in one go."""

    summary: RunSummary
    suite: Suite
    stats: list[dict[str, Any]]
    complete: list[CandidateRecord]
    counts: dict[str, int]
    best: list[Ranked]
    baselines: dict[str, dict[str, Any]]  # name -> {fitness, validation_fitness, tasks: task -> normalised}

    @property
    def tasks(self) -> list[str]:
        return [t.name for t in self.suite.tasks]

    def display_baselines(self) -> list[str]:
        """The stored baselines shown beside the evolved losses, as the engine chooses them."""
        names: list[str] = []
        for problem in sorted(self.suite.problems):
            names += [n for n in DISPLAY_BASELINES[problem] if n in self.baselines and n not in names]
        return names


def _read_run(run_path: Path, top: int) -> _Run:
    with RunStore.open(run_path, readonly=True) as store:
        try:
            suite = suite_of(store)
            best = ranking(store, top)
            baselines = {row["name"]: row for row in baseline_rows(store)}
        except (LossforgeError, KeyError, TypeError) as exc:
            raise RunError(f"{run_path}: cannot read the run's suite or scores ({exc})") from None
        candidates = store.candidates()
        return _Run(
            summary=store.summary(),
            suite=suite,
            stats=generation_stats(store),
            complete=[c for c in candidates if c.status is CandidateState.COMPLETE and c.complexity is not None],
            counts={s.value: sum(c.status is s for c in candidates) for s in CandidateState},
            best=best,
            baselines=baselines,
        )


# ---------------------------------------------------------------------------------------------- plots
def _short(text: str) -> str:
    return text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 1] + "…"


def _save(fig: Figure, path: Path) -> Figure:
    buffer = io.BytesIO()  # rendered in memory, then written atomically: no half-written PNG
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    write_atomic(path, buffer.getvalue())
    return fig  # for tests to inspect


def _plot_fitness(run: _Run, path: Path) -> Figure:
    # Figure() without pyplot: no global backend or figure registry (savefig renders PNG with Agg).
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    gens = [s["gen"] for s in run.stats]
    ax.plot(gens, [s["best"] for s in run.stats], marker="o", label="best")
    ax.plot(gens, [s["median"] for s in run.stats], marker="s", label="median")
    for i, name in enumerate(run.display_baselines()):
        ax.axhline(run.baselines[name]["fitness"], color=f"C{2 + i}", label=f"{name} (baseline)",
                   **_BASELINE_STYLE)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # generations are whole numbers
    ax.set_xlabel("generation")
    ax.set_ylabel("fitness (1 = reference loss)")
    ax.set_title("Fitness per generation")
    ax.grid(alpha=0.3)
    ax.legend(**_LEGEND)
    return _save(fig, path)


def _plot_pareto(run: _Run, front: list[int], path: Path) -> Figure:
    fig = Figure(figsize=(7, 4.2))
    ax = fig.subplots()
    complexity = np.array([c.complexity for c in run.complete], dtype=float)
    fitness = np.array([c.fitness for c in run.complete], dtype=float)
    ax.scatter(complexity, fitness, s=14, color="0.6", alpha=0.6, label=f"complete candidates ({len(fitness)})")
    ax.plot(complexity[front], fitness[front], drawstyle="steps-post", color="C3", marker="o",
            label=f"Pareto front ({len(front)})")
    ax.axhline(1.0, color="0.3", linewidth=0.8, linestyle=":", label="reference loss (fitness 1)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # complexity counts nodes
    ax.set_xlabel("complexity (nodes of the canonical expression)")
    ax.set_ylabel("fitness")
    ax.set_title("Complexity vs fitness")
    ax.grid(alpha=0.3)
    ax.legend(**_LEGEND)
    return _save(fig, path)


def _scaled(values: torch.Tensor, low: torch.Tensor | None = None,
            high: torch.Tensor | None = None) -> tuple[np.ndarray, float, float]:
    """Min-max scale a curve to [0, 1] over the finite values of its band (``low``..``high``, default the
    curve itself); returns it with the raw range."""
    y = values.detach().double().numpy()
    y = np.where(np.isfinite(y), y, np.nan)
    lo_all = np.concatenate([t.detach().double().numpy() for t in (values, low, high) if t is not None])
    lo_all = lo_all[np.isfinite(lo_all)]
    if lo_all.size == 0:
        return y, math.nan, math.nan
    low_v, high_v = float(lo_all.min()), float(lo_all.max())
    return ((y - low_v) / (high_v - low_v) if high_v > low_v else np.zeros_like(y)), low_v, high_v


def _residuals() -> torch.Tensor:
    return torch.linspace(-3.0, 3.0, 241, dtype=torch.float64)


def _probabilities() -> torch.Tensor:
    return torch.linspace(0.01, 0.99, 197, dtype=torch.float64)


def _regression_band(loss: nn.Module) -> tuple[torch.Tensor, ...]:
    return residual_band(loss, _residuals())


def _regression_curve(loss: nn.Module) -> torch.Tensor:
    """Per-sample loss against the residual, averaged over the targets of :func:`residual_band`."""
    return _regression_band(loss)[0]


def _classification_band(loss: nn.Module, n_classes: int) -> tuple[torch.Tensor, ...]:
    return probability_band(loss, _probabilities(), n_classes)


def _classification_curve(loss: nn.Module, n_classes: int) -> torch.Tensor:
    """Per-sample loss when the true class (0) gets probability p and the others share 1 - p equally."""
    return _classification_band(loss, n_classes)[0]


_Panel = tuple[str, str, np.ndarray, Callable[[nn.Module], tuple[torch.Tensor, ...]]]


def _shape_panels(run: _Run) -> list[_Panel]:
    """(problem, title, x values, curve band of a loss) of each panel the suite's problem types call for."""
    panels: list[_Panel] = []
    if "regression" in run.suite.problems:
        panels.append(("regression", "Regression: mean over y_real in [-2, 2], shaded: spread over y_real",
                       _residuals().numpy(), _regression_band))
    if "classification" in run.suite.problems:
        from lossforge.tasks.data import N_CLASSES  # the digit and generated data sets' class count

        p = _probabilities().numpy()
        panels.append(("classification", "Classification, 2 classes", p,
                       lambda loss: _classification_band(loss, 2)))
        panels.append(("classification", f"Classification, {N_CLASSES} classes (others equal; shaded: unequal)",
                       p, lambda loss: _classification_band(loss, N_CLASSES)))
    return panels


def _expression(run: _Run, rec: CandidateRecord) -> LossExpression:
    try:
        return LossExpression(rec.tree, where=f"candidate {rec.id}")
    except LossforgeError as exc:
        raise RunError(f"{run.summary.path}: {exc}") from None


def _plot_shapes(run: _Run, path: Path) -> Figure:
    panels = _shape_panels(run)
    fig = Figure(figsize=(6 * len(panels), 4.4))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    best = [_expression(run, item.record) for item in run.best[:PLOTTED]]
    for ax, (problem, title, x, curve) in zip(axes, panels):
        losses: list[tuple[str, nn.Module, dict[str, Any]]] = [
            (f"#{rank} {_short(expr.formula())}", SymbolicLoss(expr, "none", problem), style)
            for rank, (expr, style) in enumerate(zip(best, _BEST_STYLES), 1)
        ]
        losses += [(name, get_baseline(name).make(problem), {"color": f"0.{2 + 2 * i}", **_BASELINE_STYLE})
                   for i, name in enumerate(DISPLAY_BASELINES[problem])]
        with torch.no_grad():
            for label, loss, style in losses:
                mid, band_low, band_high = curve(loss)
                y, low, high = _scaled(mid, band_low, band_high)
                (line,) = ax.plot(x, y, label=f"{label}  [{low:.3g}, {high:.3g}]", **style)
                if high > low and bool(((band_high - band_low) > 1e-9 * (high - low)).any()):
                    ax.fill_between(x, (band_low.numpy() - low) / (high - low), (band_high.numpy() - low) / (high - low),
                                    color=line.get_color(), alpha=0.12, linewidth=0)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("residual y_pred - y_real" if problem == "regression"
                      else "predicted probability of the true class")
        ax.set_ylabel("loss, min-max scaled")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=7)
    fig.suptitle("Loss shapes (each curve scaled to [0, 1] over the plotted range; raw range in brackets)",
                 fontsize=10)
    return _save(fig, path)


def _task_scores(rec: CandidateRecord, tasks: list[str]) -> list[float]:
    return [float(rec.task_scores.get(t, {}).get("normalized", math.nan)) for t in tasks]


def _task_series(run: _Run) -> list[tuple[str, list[float]]]:
    """(label, normalised score per task) of the plotted best losses, then of the display baselines."""
    series = [(f"#{rank}", _task_scores(item.record, run.tasks)) for rank, item in enumerate(run.best[:PLOTTED], 1)]
    return series + [(name, [run.baselines[name]["tasks"].get(t, math.nan) for t in run.tasks])
                     for name in run.display_baselines()]


def _plot_tasks(run: _Run, path: Path) -> Figure:
    series = _task_series(run)
    fig = Figure(figsize=(max(6.0, 1.6 * len(run.tasks) + 3), 4.2))
    ax = fig.subplots()
    width = 0.8 / len(series)
    x = np.arange(len(run.tasks))
    for i, (label, values) in enumerate(series):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=label, color=f"C{i}",
               hatch=None if label.startswith("#") else "//")
    ax.axhline(1.0, color="0.3", linewidth=0.8, linestyle=":")
    positive = [v for _, values in series for v in values if v > 0]
    # Normalised scores are ratios to the reference: on a log axis 2x better and 2x worse look alike.
    log = bool(positive) and max(positive) / min(positive) > 10
    if log:
        ax.set_yscale("log")
    ax.set_xticks(x, run.tasks)
    ax.set_ylabel("normalised score (1 = reference loss)" + (", log scale" if log else ""))
    ax.set_title("Per-task scores: best losses (#rank, see report.md) and baselines (hatched)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(**_LEGEND)
    return _save(fig, path)


# ------------------------------------------------------------------------------------------- Markdown
def _cell(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.4f}"


def _formula(text: str | None) -> str:
    if not text:
        return "–"
    return markdown.code(text)


_SECTIONS = (
    ("fitness", "Fitness per generation",
     "Best and median fitness of the population per generation; dashed lines are the baselines' fitness."),
    ("pareto", "Complexity vs fitness",
     "Every complete candidate; the Pareto front (no other candidate is both simpler and fitter) is highlighted."),
    ("shapes", "Loss shapes",
     "The best losses (#1 solid, #2 dash-dot, #3 dotted) next to reference losses (grey, dashed). The curves "
     "differ in scale and offset, so each is min-max scaled to [0, 1] over the plotted range (raw range in "
     "brackets): compare shapes, not values. Each curve is labelled with its formula."),
    ("tasks", "Per-task scores",
     "Normalised score of the best losses and the baselines on each task (1 = reference loss)."),
)

_SHAPE_NOTES = {
    "classification": " Classification: per-sample loss (summed over classes) against the softmax probability "
                      "of the true class, the other classes sharing the rest equally; shaded: the range over "
                      "random unequal shares.",
    "regression": " Regression: loss against the residual y_pred - y_real, averaged over targets y_real in "
                  "[-2, 2]; the shaded band is the spread over those targets (zero for a loss of the residual "
                  "alone).",
}


def _markdown(run: _Run, images: dict[str, str], front: list[int]) -> str:
    s = run.summary
    lines = [
        f"# Run report: {markdown.text(s.name)}",
        "",
        f"- Run file: {markdown.code(s.path)} ({s.status.value}, "
        f"lossforge {markdown.text(s.lossforge_version or 'unknown')})",
        f"- Generations finished: {s.generations}; elapsed {s.elapsed_s / 60:.1f} min",
        f"- Candidates: {s.candidates} ({', '.join(f'{n} {k}' for k, n in run.counts.items() if n) or 'none'})",
        f"- Suite: {markdown.text(run.suite.name)}, tasks {', '.join(markdown.text(t) for t in run.tasks)}; "
        f"search seeds {list(run.suite.seeds)}",
        "",
        "Fitness is the weighted geometric mean over tasks of each task's score normalised against the task's "
        "reference loss on the same seed: 1.0 is as good as the reference, higher is better. *Validation* is "
        "the fitness re-measured on held-out seeds for the best losses when the search ended.",
        "",
    ]
    for key, title, caption in _SECTIONS:
        if key == "shapes":
            caption += "".join(_SHAPE_NOTES[p] for p in sorted(run.suite.problems))
        lines += [f"## {title}", ""]
        lines += [f"![{title}]({images[key]})", "", f"*{caption}*", ""] if key in images else ["_No data yet._", ""]
        if key == "pareto" and front:
            lines += ["| complexity | fitness | formula |", "|---:|---:|---|"]
            lines += [f"| {run.complete[i].complexity} | {_cell(run.complete[i].fitness)} | "
                      f"{_formula(run.complete[i].formula)} |" for i in front]
            lines.append("")
    header, rule = "| " + " | ".join(markdown.text(t) for t in run.tasks) + " |", "|---:" * len(run.tasks) + "|"
    lines += ["## Hall of fame", ""]
    if run.best:
        lines += ["| rank | formula | complexity | fitness | validation " + header, "|---:|---|---:|---:|---:" + rule]
        for rank, item in enumerate(run.best, 1):
            rec = item.record
            scores = " | ".join(_cell(v) for v in _task_scores(rec, run.tasks))
            complexity = rec.complexity if rec.complexity is not None else "–"
            known = stored_same_as_known(rec.tree, run.suite.problem, run.suite.probe_classes[0])
            note = f" (= {markdown.text(known_loss_text(*known))})" if known else ""  # as `show` says it
            lines.append(f"| {rank} | {_formula(rec.formula)}{note} | {complexity} | {_cell(rec.fitness)} | "
                         f"{_cell(item.validation_fitness)} | {scores} |")
    else:
        lines.append("_No complete candidate yet._")
    lines += ["", "## Baselines", ""]
    if run.baselines:
        lines += ["| baseline | fitness | validation " + header, "|---|---:|---:" + rule]
        for name, row in run.baselines.items():
            scores = " | ".join(_cell(row["tasks"].get(t, math.nan)) for t in run.tasks)
            lines.append(f"| {markdown.text(name)} | {_cell(row['fitness'])} | {_cell(row['validation_fitness'])} "
                         f"| {scores} |")
        references = ", ".join(sorted({t.task.reference for t in run.suite.tasks}))
        lines += ["", f"Task scores are normalised seed by seed against each task's reference loss "
                      f"({markdown.text(references)})."]
    else:
        lines.append("_No baselines stored._")
    return "\n".join(lines) + "\n"


def write_report(run_path: str | os.PathLike[str], out_dir: str | os.PathLike[str], top: int = 10,
                 force: bool = False) -> Path:
    """Write the PNG plots and ``report.md`` of the run at ``run_path`` into ``out_dir``; returns report.md.

    The run file is only read. ``top`` is the length of the hall of fame table (the plots draw the best
    three). Plots without data yet (e.g. no finished generation) are left out and the Markdown says so.
    Raises :class:`~lossforge.errors.RunError` for a missing or unreadable run and
    :class:`~lossforge.errors.ExportError` when ``out_dir`` cannot be created or written, or already holds
    a report and ``force`` is false. Nothing is written until every figure has rendered, and every file is
    written atomically (an old one stays intact on failure);
    a plot left out this time removes the old report's one of that name, once the new report.md is written.
    """
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ExportError(f"top must be a positive integer, got {top!r}")
    run = _read_run(Path(run_path), top)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create report directory {out}: {exc.strerror or exc}") from None
    names = ["report.md"] + [f"report_{key}.png" for key in ("fitness", "pareto", "shapes", "tasks")]
    for name in names:  # all checked before anything is written
        check_output(out / name, force=force, inputs=[run_path])
    front = pareto_front([(float(c.complexity), float(c.fitness)) for c in run.complete])
    plots: dict[str, tuple[Callable[[_Run, Path], None], bool]] = {
        "fitness": (_plot_fitness, bool(run.stats)),
        "pareto": (lambda r, p: _plot_pareto(r, front, p), bool(run.complete)),
        "shapes": (_plot_shapes, True),
        "tasks": (_plot_tasks, bool(_task_series(run))),
    }
    images, rendered = {}, {}
    # every figure and the Markdown are rendered before the first is written: a plot failing midway (a
    # --force over an old report) left new figures beside the old report.md
    with tempfile.TemporaryDirectory(prefix="lossforge-report-") as scratch:
        for key, (plot, has_data) in plots.items():
            if has_data:
                plot(run, Path(scratch) / f"report_{key}.png")
                images[key] = f"report_{key}.png"
                rendered[key] = (Path(scratch) / images[key]).read_bytes()
    document = _markdown(run, images, front)
    for key, png in rendered.items():
        write_atomic(out / images[key], png)
    report = out / "report.md"
    write_atomic(report, document)
    for key in plots.keys() - images.keys():  # a figure of the report replaced (force) would describe another run
        (out / f"report_{key}.png").unlink(missing_ok=True)
    return report
