#!/usr/bin/env python
"""Reproduce the survey's noise-purification experiment (section 4, Figures 2-5), fairly.

The survey adds N(mean, sigma) noise to the inputs x = 1..15 of y = 2.1 + 3.2x + 1.6x^2 + 0.9x^3, then
"purifies" them by subtracting a *fresh random draw* from N(mean', sigma') with hand-set "learned"
parameters, trains a second time on the purified inputs *continuing from the already-trained network*, and
plots the two training-loss curves. This script runs, for each of the four (mean, sigma) settings and
several seeds, with the task's own data, model and training code (lossforge.tasks.regression):

* ``noisy``: train on the noisy inputs;
* ``survey protocol``: fresh-draw purification, training continued from the ``noisy`` run's weights;
* ``fresh draw``: the same fresh-draw purification, from the same initial weights as ``noisy``;
* ``mean removed (survey params)``: subtract mean' (the noise pattern), same initial weights;
* ``mean removed (estimated)``: subtract the shift the task estimates from its trusted calibration
  subset (median of the residuals, kept only when significant), same initial weights.

It plots the training loss and the error against the clean target per epoch (mean over seeds and a
min-max band), the final clean errors, and prints a Markdown table of the final numbers.

Usage: ``python scripts/reproduce_survey.py [--out docs/img] [--seeds 5] [--epochs 600]``
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from lossforge.tasks.regression import NoiseEstimate, RegressionTask  # noqa: E402

#: (true mean, true sigma) and the survey's simulated "learned" (mean', sigma'), Figures 2-5.
SETTINGS = [((0.0, 0.1), (0.01, 0.08)), ((0.0, 0.5), (0.2, 0.48)), ((0.0, 1.0), (0.1, 0.9)), ((3.0, 1.0), (2.8, 0.9))]
VARIANTS = ["noisy", "survey protocol", "fresh draw", "mean removed (survey params)", "mean removed (estimated)"]
COLORS = ["black", "tab:red", "tab:orange", "tab:blue", "tab:green"]
STYLES = ["--", "-", ":", "-", "-."]


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample squared error, the survey's loss."""
    return (pred - target) ** 2


@dataclass
class Curves:
    """Per-epoch histories ``[seeds, epochs, variants]`` and the mean estimated noise model of one setting."""

    train_loss: np.ndarray
    clean_rmse: np.ndarray
    est_mean: float
    est_std: float
    est_shift: float


def survey_task(mean: float, std: float, epochs: int, calibration: int) -> RegressionTask:
    """The survey's data: 15 evenly spaced inputs 1..15 with N(mean, std) input noise, clean targets."""
    return RegressionTask(
        noise="gaussian", noise_on="inputs", noise_mean=mean, noise_std=std, x_low=1.0, x_high=15.0,
        x_design="grid", n_train=15, n_calibration=calibration, steps=epochs,
    )


def run_seed(
    task: RegressionTask, learned: tuple[float, float], seed: int
) -> tuple[np.ndarray, np.ndarray, NoiseEstimate]:
    """Train every variant on one seed; returns train loss and clean RMSE ``[epochs, variants]``."""
    estimated = task.make_data(seed)
    given = task.make_data(seed, estimate=NoiseEstimate.known(input_mean=learned[0], input_std=learned[1]))
    # The survey's purification: subtract a fresh draw from N(mean', sigma') (a stream of its own).
    fresh = np.random.default_rng([seed, 2]).normal(learned[0], learned[1], task.n_train)
    x_fresh = estimated.scale.inputs(estimated.raw["x_noisy"] - fresh)
    inputs = torch.stack([estimated.x_noisy, x_fresh, x_fresh, given.x_purified, estimated.x_purified])
    targets = estimated.y_noisy.expand(len(VARIANTS), -1)  # input noise only: the targets are clean
    test = {"x_test": estimated.x_test, "y_test": estimated.y_test}

    # All variants but the survey protocol start from the same initial weights (one batched model).
    fresh_start = [0, 2, 3, 4]
    first = task.fit([mse] * 4, inputs[fresh_start], targets[fresh_start], seed, record=True, **test)
    # Survey protocol: a copy of the trained noisy model keeps training on the fresh-draw inputs.
    continued = task.build_model(1, seed)
    with torch.no_grad():
        for dst, src in zip(continued.parameters(), first.model.parameters()):
            dst.copy_(src[:1])
    second = task.fit([mse], inputs[1:2], targets[1:2], seed, model=continued, record=True, **test)

    order = [0, None, 1, 2, 3]  # column of each variant in `first`; None: the continued run
    train = np.stack([second.train_loss[:, 0] if i is None else first.train_loss[:, i] for i in order], 1)
    clean = np.stack([second.test_rmse[:, 0] if i is None else first.test_rmse[:, i] for i in order], 1)
    return train, clean, estimated.estimate


def run_setting(
    true: tuple[float, float], learned: tuple[float, float], seeds: int, epochs: int, calibration: int
) -> Curves:
    """All seeds of one (mean, sigma) setting."""
    task = survey_task(true[0], true[1], epochs, calibration)
    runs = [run_seed(task, learned, seed) for seed in range(seeds)]
    return Curves(
        np.stack([r[0] for r in runs]),
        np.stack([r[1] for r in runs]),
        float(np.mean([r[2].input_mean for r in runs])),
        float(np.mean([r[2].input_std for r in runs])),
        float(np.mean([r[2].input_shift for r in runs])),
    )


def title(true: tuple[float, float], learned: tuple[float, float]) -> str:
    """Panel title naming the true noise and the survey's learned parameters."""
    return f"noise (mean, σ) = {true}\nsurvey's learned = {learned}"


def plot_histories(results: list[Curves], which: str, ylabel: str, path: Path) -> None:
    """One panel per setting: mean over seeds (line) and min-max band of each variant, log scale."""
    fig, axes = plt.subplots(1, len(SETTINGS), figsize=(16, 4.2), sharey=False)
    for ax, (true, learned), res in zip(axes, SETTINGS, results):
        values = getattr(res, which)
        epochs = np.arange(1, values.shape[1] + 1)
        for v, name in enumerate(VARIANTS):
            ax.plot(epochs, values[:, :, v].mean(0), STYLES[v], color=COLORS[v], lw=1.4, label=name)
            ax.fill_between(epochs, values[:, :, v].min(0), values[:, :, v].max(0), color=COLORS[v], alpha=0.08)
        ax.set_yscale("log")
        ax.set_title(title(true, learned), fontsize=9)
        ax.set_xlabel("epoch (full-batch step)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(ylabel)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(VARIANTS), fontsize=9, frameon=False)
    fig.suptitle(f"{ylabel}: mean over {values.shape[0]} seeds, band = min-max over seeds", fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_final(results: list[Curves], path: Path) -> None:
    """Final clean-target RMSE of each variant per setting: mean over seeds, min-max whiskers."""
    fig, ax = plt.subplots(figsize=(11, 4.2))
    width = 0.8 / len(VARIANTS)
    for v, name in enumerate(VARIANTS):
        finals = np.array([res.clean_rmse[:, -1, v] for res in results])  # [settings, seeds]
        mean = finals.mean(1)
        err = np.stack([mean - finals.min(1), finals.max(1) - mean])
        x = np.arange(len(SETTINGS)) + (v - (len(VARIANTS) - 1) / 2) * width
        ax.bar(x, mean, width, yerr=err, color=COLORS[v], alpha=0.85, label=name, capsize=2)
    ax.set_xticks(np.arange(len(SETTINGS)), [f"(mean, σ) = {t}" for t, _ in SETTINGS])
    ax.set_yscale("log")
    ax.set_ylabel("final RMSE vs clean target (std. units)")
    ax.set_title("Error against the clean cubic after training (mean over seeds, min-max whiskers)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def table(results: list[Curves]) -> str:
    """Markdown table of the final training loss and clean RMSE (mean ± sd over seeds)."""
    lines = [
        "| setting (mean, σ) | variant | final training loss | final clean RMSE |",
        "|---|---|---|---|",
    ]
    for (true, learned), res in zip(SETTINGS, results):
        for v, name in enumerate(VARIANTS):
            tl, ce = res.train_loss[:, -1, v], res.clean_rmse[:, -1, v]
            lines.append(
                f"| {true} | {name} | {tl.mean():.4f} ± {tl.std():.4f} | {ce.mean():.4f} ± {ce.std():.4f} |"
            )
    lines += [
        "",
        "| setting (mean, σ) | survey's learned | estimated mean | estimated σ | mean shift removed |",
        "|---|---|---|---|---|",
    ]
    for (true, learned), res in zip(SETTINGS, results):
        lines.append(f"| {true} | {learned} | {res.est_mean:.3f} | {res.est_std:.3f} | {res.est_shift:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/img"), help="folder for the PNGs (default docs/img)")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per setting (default 5)")
    parser.add_argument("--epochs", type=int, default=600, help="full-batch training steps per run (default 600)")
    parser.add_argument("--calibration", type=int, default=8, help="trusted calibration points (default 8)")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.epochs < 1 or args.calibration < 3:
        parser.error("--seeds and --epochs must be >= 1 and --calibration >= 3")
    torch.set_num_threads(1)
    start = time.perf_counter()
    results = [run_setting(true, learned, args.seeds, args.epochs, args.calibration) for true, learned in SETTINGS]
    args.out.mkdir(parents=True, exist_ok=True)
    plot_histories(results, "train_loss", "training loss (MSE, std. units)", args.out / "survey_training_loss.png")
    plot_histories(results, "clean_rmse", "RMSE vs clean target (std. units)", args.out / "survey_clean_error.png")
    plot_final(results, args.out / "survey_final_error.png")
    print(table(results))
    print(f"\n{args.seeds} seeds x {args.epochs} epochs in {time.perf_counter() - start:.0f} s; figures in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
