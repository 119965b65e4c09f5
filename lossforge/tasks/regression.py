"""Noise-purified cubic regression: how well does a loss recover a clean function from noisy data?

The task fits ``y = 2.1 + 3.2x + 1.6x^2 + 0.9x^3`` (the survey's target function, section 4) with a small
MLP trained by each candidate loss, on data whose inputs and/or targets carry noise (Gaussian,
heavy-tailed Student-t, or outlier-contaminated). Every loss is trained twice from the *same* initial
weights: once on the noisy data and once on data *purified* with a noise model estimated from a small
trusted calibration subset. The score is the negative RMSE of the fitted function against the **clean**
target on held-out clean inputs, averaged over both runs (standardised target units, higher is better).

Noise model and purification
----------------------------
The calibration subset holds ``n_calibration`` points whose clean input and target are known next to their
noisy observations, so their residuals (observed - clean) are samples of the noise. The noise's location
is estimated by the median and its scale by the MAD (times 1.4826, consistent for Gaussian noise); both
are robust, so the estimate describes the bulk of the noise even when outliers or heavy tails are present.
Purification subtracts the estimated location from the noisy training inputs and targets, when it is
significant (more than ``purify_z`` standard errors from zero): an insignificant median is estimation
noise, and subtracting it would *add* a bias to unbiased data.

What purification can and cannot remove:

* It removes the **systematic** part of the noise: a constant bias of the targets, or a constant shift of
  the inputs (a mis-calibrated sensor). A shift of the inputs moves the whole fitted curve, so this is
  where purification helps most.
* It cannot remove **per-sample zero-mean** noise: each sample's draw is unknown, only its distribution
  is. Subtracting a fresh random draw from the estimated distribution (what the survey's published code
  does) does not cancel the noise; it adds a second independent draw and so *increases* the variance.
  The estimated scale is therefore reported, not used.
* It cannot undo the attenuation caused by zero-mean input noise (errors in variables): the best fit
  to noisy inputs is a smoothed version of the function, whatever the loss.
* Under one-sided outlier contamination the median locates the bulk of the noise, not its mean; the
  outliers themselves stay in the data, and handling them is the loss's job.

Fairness and speed
------------------
All data come from a numpy generator derived from ``(seed, 0)``; initial weights from a torch generator
derived from ``(seed, 1)``, copied to every model (common random numbers), so model k's result depends on
its loss and the seed only. Inputs are standardised with the known design interval and targets with
robust statistics (median, IQR) of the *noisy* training targets, so no clean target leaks into training;
the same constants map the purified data and the test set. The K losses' noisy and purified runs are
trained together as 2K models of one :class:`~lossforge.models.BatchedMLP` (K when purification changed
nothing, since the second run would repeat the first), full batch, Adam with a cosine learning-rate decay.

The default model is a 1-16-1 tanh MLP trained for 600 steps at learning rate 0.1. It fits the clean
cubic to about 0.015 RMSE, well below the noise-induced errors the score is meant to compare, and its
scores barely move when training runs twice as long: deeper or wider models kept fitting individual
noisy points the longer they trained (the score then measured the step budget), and shorter runs left
an optimisation error that favoured whichever loss converged fastest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import numpy as np
import torch

from lossforge.errors import ConfigError
from lossforge.models import BatchedMLP
from lossforge.numpy_mlp import NumpyMLPTrainer
from lossforge.tasks.base import (
    LossLike,
    Task,
    TaskResult,
    check_choice,
    check_int,
    check_range,
    finite_or_worst,
)
from lossforge.training import BatchedTrainer, FitResult, Trainer, make_trainer, predict, rmse

#: Consistency factor of the MAD for Gaussian noise.
MAD_TO_STD = 1.4826
#: Interquartile range of a standard normal distribution.
IQR_TO_STD = 1.3490
#: The standard error of the median of n Gaussian samples is this times sigma / sqrt(n).
MEDIAN_SE_FACTOR = math.sqrt(math.pi / 2)

NOISE_KINDS = ("gaussian", "student_t", "outliers")
NOISE_ON = ("targets", "inputs", "both")
DESIGNS = ("uniform", "grid")
ACTIVATIONS = ("tanh", "relu", "gelu")
SCHEDULES = ("cosine", "constant")
#: Training engines by name, each a preference list of trainers (the first that supports the model trains it):
#: "numpy": the fast trainer (lossforge.numpy_mlp) where it applies (CPU, tanh or relu), else autograd;
#: "autograd": torch autograd and torch.optim.Adam through BatchedTrainer, the reference.
ENGINES: dict[str, tuple[type[Trainer], ...]] = {
    "numpy": (NumpyMLPTrainer, BatchedTrainer),
    "autograd": (BatchedTrainer,),
}

#: Named settings a suite can refer to. Noise parameters are in raw (unstandardised) units; on the default
#: input range [-2, 2] the clean target runs from -5.1 to 22.1 with standard deviation 6.6.
PRESETS: dict[str, dict[str, Any]] = {
    # Zero-mean Gaussian target noise: the setting where MSE is the efficient choice.
    "gaussian": {"noise": "gaussian", "noise_on": "targets", "noise_mean": 0.0, "noise_std": 3.0},
    # Gaussian noise plus 15% one-sided gross errors (+25 to +75, i.e. 4 to 11 clean-target SDs).
    "outliers": {
        "noise": "outliers",
        "noise_on": "targets",
        "noise_mean": 0.0,
        "noise_std": 1.0,
        "outlier_fraction": 0.15,
        "outlier_scale": 50.0,
    },
    # Student-t noise with 1.5 degrees of freedom: finite mean, infinite variance.
    "heavy_tailed": {
        "noise": "student_t",
        "noise_on": "targets",
        "noise_mean": 0.0,
        "noise_std": 1.5,
        "t_df": 1.5,
    },
    # Biased Gaussian target noise: a constant offset that purification can remove.
    "biased_targets": {"noise": "gaussian", "noise_on": "targets", "noise_mean": 6.0, "noise_std": 3.0},
    # The survey's Figure 5 setting: inputs on [1, 15] shifted by N(3, 1) noise.
    "shifted_inputs": {
        "noise": "gaussian",
        "noise_on": "inputs",
        "noise_mean": 3.0,
        "noise_std": 1.0,
        "x_low": 1.0,
        "x_high": 15.0,
    },
}


def target_function(x: np.ndarray) -> np.ndarray:
    """The clean target ``y = 2.1 + 3.2x + 1.6x^2 + 0.9x^3``."""
    return 2.1 + 3.2 * x + 1.6 * x**2 + 0.9 * x**3


def derive_seed(seed: int, stream: int) -> int:
    """An independent 63-bit seed for ``stream`` of ``seed`` (data and initial weights never share draws)."""
    state = np.random.SeedSequence([int(seed) & (2**63 - 1), stream]).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(1))


def robust_location_scale(values: np.ndarray) -> tuple[float, float]:
    """Median and MAD-based standard deviation (consistent for Gaussian data)."""
    loc = float(np.median(values))
    return loc, float(MAD_TO_STD * np.median(np.abs(values - loc)))


@dataclass(frozen=True)
class NoiseEstimate:
    """Noise model of the inputs and of the targets (raw units) and the shifts purification subtracts.

    ``*_mean`` and ``*_std`` are the estimated location and scale; ``*_shift`` is what purification removes
    (the location, or 0 when the location is not significant).
    """

    input_mean: float
    input_std: float
    input_shift: float
    target_mean: float
    target_std: float
    target_shift: float

    @classmethod
    def from_residuals(cls, input_residuals: np.ndarray, target_residuals: np.ndarray, z: float) -> "NoiseEstimate":
        """Estimate from calibration residuals ``observed - clean``: median, MAD, and a shift kept only when
        the median is more than ``z`` standard errors from zero."""
        values: list[float] = []
        for residuals in (input_residuals, target_residuals):
            loc, scale = robust_location_scale(residuals)
            std_error = MEDIAN_SE_FACTOR * scale / math.sqrt(len(residuals))
            values += [loc, scale, loc if abs(loc) > z * std_error else 0.0]
        return cls(*values)

    @classmethod
    def known(
        cls, input_mean: float = 0.0, input_std: float = 0.0, target_mean: float = 0.0, target_std: float = 0.0
    ) -> "NoiseEstimate":
        """A given noise model (e.g. the survey's "learned" parameters); purification removes its means."""
        return cls(input_mean, input_std, input_mean, target_mean, target_std, target_mean)

    def metrics(self, purified: bool, inputs: bool = True) -> dict[str, float]:
        """The estimate as task metrics (``inputs=False``: the targets' only); ``purified``: whether the
        purified run differed from the noisy one and was trained."""
        names = (("inputs", self.input_mean, self.input_std),) if inputs else ()
        names += (("targets", self.target_mean, self.target_std),)
        values = {f"noise_{stat}_est_{on}": v for on, mean, std in names for stat, v in (("mean", mean), ("std", std))}
        return {**values, "purified": float(purified)}


@dataclass(frozen=True)
class Standardizer:
    """Affine maps of raw inputs and targets to the scale-free units the models train in."""

    x_loc: float
    x_scale: float
    y_loc: float
    y_scale: float
    device: str = "cpu"

    def inputs(self, x: np.ndarray) -> torch.Tensor:
        """Raw inputs ``[N]`` -> standardised model inputs ``[N, 1]`` (float32 on ``device``)."""
        v = (np.asarray(x, dtype=np.float64) - self.x_loc) / self.x_scale
        return torch.as_tensor(v, dtype=torch.float32, device=self.device).unsqueeze(-1)

    def targets(self, y: np.ndarray) -> torch.Tensor:
        """Raw targets ``[N]`` -> standardised targets ``[N]`` (float32 on ``device``)."""
        v = (np.asarray(y, dtype=np.float64) - self.y_loc) / self.y_scale
        return torch.as_tensor(v, dtype=torch.float32, device=self.device)


@dataclass(frozen=True)
class RegressionData:
    """One seed's data, standardised. Inputs have shape ``[N, 1]``, targets ``[N]``.

    ``x_noisy``/``y_noisy`` are the observed training data, ``x_purified``/``y_purified`` the same after
    purification, ``x_test``/``y_test`` clean held-out inputs and targets. ``raw`` keeps the unstandardised
    numpy arrays ``x_clean``, ``x_noisy``, ``y_clean``, ``y_noisy`` of the training set.
    """

    x_noisy: torch.Tensor
    y_noisy: torch.Tensor
    x_purified: torch.Tensor
    y_purified: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    estimate: NoiseEstimate
    scale: Standardizer
    raw: dict[str, np.ndarray] = field(repr=False)

    @property
    def purification_changes(self) -> bool:
        """Whether the purified training data differ from the noisy ones."""
        return not (torch.equal(self.x_noisy, self.x_purified) and torch.equal(self.y_noisy, self.y_purified))


@dataclass
class RegressionTask(Task):
    """Fit the survey's cubic from noisy data, with and without noise purification (see the module doc).

    Noise parameters (``noise_mean``, ``noise_std``, ``outlier_scale``) are in raw units of the variable they
    are added to (``noise_on``). ``noise`` picks the distribution: ``"gaussian"`` is
    ``N(noise_mean, noise_std)``; ``"student_t"`` is ``noise_mean + noise_std * t(t_df)``; ``"outliers"`` is
    the Gaussian noise plus, on a fraction ``outlier_fraction`` of the points, a positive offset uniform in
    ``[outlier_scale / 2, 3 * outlier_scale / 2]`` (one-sided contamination, e.g. a sensor reading high).
    Training inputs are drawn uniformly from ``[x_low, x_high]`` or, with ``x_design="grid"``, evenly spaced.
    """

    kind_name: ClassVar[str] = "regression"
    problem: ClassVar[str] = "regression"
    reference: ClassVar[str] = "mse"

    noise: str = "gaussian"
    noise_on: str = "targets"
    noise_mean: float = 0.0
    noise_std: float = 3.0
    outlier_fraction: float = 0.15
    outlier_scale: float = 50.0
    t_df: float = 1.5
    n_train: int = 256
    n_calibration: int = 32
    purify_z: float = 3.0
    n_test: int = 256
    x_low: float = -2.0
    x_high: float = 2.0
    x_design: str = "uniform"
    hidden: int = 16
    layers: int = 1
    activation: str = "tanh"
    steps: int = 600
    lr: float = 0.1
    schedule: str = "cosine"
    engine: str = "numpy"

    @property
    def scale_free(self) -> bool:
        return True  # full-batch Adam, nothing added to the loss (see Task.scale_free)

    def __post_init__(self) -> None:
        for name, choices in (("noise", NOISE_KINDS), ("noise_on", NOISE_ON), ("x_design", DESIGNS),
                              ("activation", ACTIVATIONS), ("schedule", SCHEDULES),
                              ("engine", ENGINES)):
            check_choice(getattr(self, name), f"regression task: {name}", choices)
        for name in ("noise_mean", "x_low", "x_high"):
            check_range(getattr(self, name), f"regression task: {name}")
        for name in ("noise_std", "outlier_scale", "purify_z"):
            check_range(getattr(self, name), f"regression task: {name}", low=0.0)
        check_range(self.outlier_fraction, "regression task: outlier_fraction", 0.0, 0.5)
        check_range(self.t_df, "regression task: t_df", low=0.0, low_open=True)
        check_range(self.lr, "regression task: lr", low=0.0, low_open=True)
        if not self.x_low < self.x_high:
            raise ConfigError(
                f"regression task: x_low={self.x_low!r} must be smaller than x_high={self.x_high!r}; swap or widen them"
            )
        for name, minimum in (("n_train", 4), ("n_calibration", 3), ("n_test", 2), ("hidden", 1), ("layers", 1),
                              ("steps", 1)):
            check_int(getattr(self, name), f"regression task: {name}", minimum)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "RegressionTask":
        """A task with the settings ``PRESETS[name]``, updated by ``overrides``."""
        if name not in PRESETS:
            raise ConfigError(f"regression task: unknown preset {name!r}; use one of {', '.join(map(repr, PRESETS))}")
        return cls(**{**PRESETS[name], **overrides})

    # ------------------------------------------------------------------------------------------ data

    def draw_noise(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` draws of the configured noise (raw units).

        The same underlying streams are drawn whatever the noise kind, so that changing the kind changes
        the noise's distribution but not the rest of the seed's data.
        """
        z = rng.standard_normal(n)
        chi2 = rng.chisquare(self.t_df, n)
        is_outlier = rng.random(n) < self.outlier_fraction
        offset = self.outlier_scale * rng.uniform(0.5, 1.5, n)
        if self.noise == "student_t":
            return self.noise_mean + self.noise_std * z / np.sqrt(chi2 / self.t_df)
        gaussian = self.noise_mean + self.noise_std * z
        if self.noise == "outliers":
            return gaussian + np.where(is_outlier, offset, 0.0)
        return gaussian

    def make_data(self, seed: int, device: str = "cpu", estimate: NoiseEstimate | None = None) -> RegressionData:
        """Draw, purify and standardise one seed's data.

        ``estimate`` replaces the noise model estimated from the calibration subset (to purify with given
        parameters, e.g. the survey's "learned" ones); the training data are the same either way.
        """
        rng = np.random.default_rng(derive_seed(seed, 0))
        n, n_cal = self.n_train, self.n_calibration
        x_uniform = rng.uniform(self.x_low, self.x_high, n)  # drawn for both designs: streams stay aligned
        x_clean = np.linspace(self.x_low, self.x_high, n) if self.x_design == "grid" else x_uniform
        input_noise, target_noise = self.draw_noise(rng, n), self.draw_noise(rng, n)
        # The calibration points' residuals are their noise draws: additive noise does not depend on x.
        cal_input_noise, cal_target_noise = self.draw_noise(rng, n_cal), self.draw_noise(rng, n_cal)

        noisy_inputs, noisy_targets = self.noise_on in ("inputs", "both"), self.noise_on in ("targets", "both")
        y_clean = target_function(x_clean)
        x_noisy = x_clean + input_noise if noisy_inputs else x_clean
        y_noisy = y_clean + target_noise if noisy_targets else y_clean
        if estimate is None:  # residuals are zero where no noise is applied
            estimate = NoiseEstimate.from_residuals(
                cal_input_noise if noisy_inputs else np.zeros(n_cal),
                cal_target_noise if noisy_targets else np.zeros(n_cal),
                self.purify_z,
            )
        x_purified = x_noisy - estimate.input_shift
        y_purified = y_noisy - estimate.target_shift

        # Inputs: the known design interval. Targets: robust statistics of the observed (noisy) targets.
        q25, median, q75 = np.quantile(y_noisy, [0.25, 0.5, 0.75])
        y_scale = (q75 - q25) / IQR_TO_STD
        scale = Standardizer(
            0.5 * (self.x_low + self.x_high),
            (self.x_high - self.x_low) / math.sqrt(12.0),
            float(median),
            float(y_scale) if y_scale > 0 else 1.0,
            device,
        )
        x_test = np.linspace(self.x_low, self.x_high, self.n_test)
        return RegressionData(
            scale.inputs(x_noisy),
            scale.targets(y_noisy),
            scale.inputs(x_purified),
            scale.targets(y_purified),
            scale.inputs(x_test),
            scale.targets(target_function(x_test)),
            estimate,
            scale,
            {"x_clean": x_clean, "x_noisy": x_noisy, "y_clean": y_clean, "y_noisy": y_noisy},
        )

    # -------------------------------------------------------------------------------------- training

    def build_model(self, n_models: int, seed: int, device: str | torch.device = "cpu") -> BatchedMLP:
        """``n_models`` copies of one freshly initialised MLP (the weights depend on ``seed`` only)."""
        generator = torch.Generator().manual_seed(derive_seed(seed, 1))
        sizes = [1] + [self.hidden] * self.layers + [1]
        return BatchedMLP(n_models, sizes, generator, activation=self.activation).to(device)

    def fit(
        self,
        losses: Sequence[LossLike],
        inputs: torch.Tensor,
        targets: torch.Tensor,
        seed: int,
        *,
        model: BatchedMLP | None = None,
        steps: int | None = None,
        record: bool = False,
        x_test: torch.Tensor | None = None,
        y_test: torch.Tensor | None = None,
    ) -> FitResult:
        """Train model m with ``losses[m]`` on ``inputs[m]`` (``[M, N, 1]``) and ``targets[m]`` (``[M, N]``).

        Full batch, Adam with the task's learning-rate schedule, for ``steps`` steps (default: the task's).
        ``model`` continues training an existing batched model instead of a fresh one built from ``seed``.
        With ``record=True`` the per-step training losses, and the test RMSEs when ``x_test``/``y_test`` are
        given, are kept in the result.
        """
        steps = self.steps if steps is None else steps
        model = self.build_model(len(losses), seed, inputs.device) if model is None else model
        trainer = make_trainer(ENGINES[self.engine], model, losses, lr=self.lr, device=inputs.device)
        return trainer.fit(inputs, targets, steps, lambda step: self.learning_rate(step, steps), record, x_test, y_test)

    def learning_rate(self, step: int, steps: int) -> float:
        """The learning rate of step ``step`` of ``steps``: constant, or cosine-annealed from ``lr`` to 0."""
        if self.schedule == "cosine":
            return 0.5 * self.lr * (1.0 + math.cos(math.pi * step / steps))
        return self.lr

    def evaluate(self, losses: Sequence[LossLike], seed: int, device: str = "cpu") -> list[TaskResult]:
        """Score each loss: negative clean-target RMSE, averaged over its noisy and purified runs."""
        if not losses:
            return []
        data = self.make_data(seed, device)
        k = len(losses)
        # Models runs*i (noisy) and runs*i+1 (purified) train with loss i from the same initial weights. When
        # purification changed nothing the purified run would repeat the noisy one, so it is not trained.
        runs = 2 if data.purification_changes else 1
        inputs = torch.stack([data.x_noisy, data.x_purified][:runs]).repeat(k, 1, 1)
        targets = torch.stack([data.y_noisy, data.y_purified][:runs]).repeat(k, 1)
        fitted = self.fit([loss for loss in losses for _ in range(runs)], inputs, targets, seed)
        errors = rmse(predict(fitted.model, data.x_test), data.y_test).view(k, runs).tolist()
        return paired_results(errors, fitted.failures, runs, data.estimate.metrics(runs == 2), self.worst_score)


def paired_results(errors: Sequence[Sequence[float]], failures: Sequence[str | None], runs: int,
                   metrics: dict[str, float], worst: float) -> list[TaskResult]:
    """One result per loss from the clean-test RMSEs of its runs, ``errors[i] = [noisy, purified]`` (one value
    when purification changed nothing) and the failures of its ``runs`` models (``failures[runs*i : runs*(i+1)]``).

    The score is minus the mean of the noisy and the purified run's RMSE (the same number twice with one run),
    so a purifying task's score means the same whatever its data; ``metrics`` (the noise model) go with each."""
    results = []
    for i, pair in enumerate(errors):
        noisy, purified = pair[0], pair[-1]
        reason = next((f for f in failures[runs * i : runs * (i + 1)] if f is not None), None)
        if reason is None and not (math.isfinite(noisy) and math.isfinite(purified)):
            reason = "non-finite predictions after training"
        if reason is not None:
            results.append(TaskResult.failed(reason, worst))
            continue
        score = finite_or_worst(-0.5 * (noisy + purified), worst)
        results.append(TaskResult(score, {"rmse_noisy": noisy, "rmse_purified": purified, **metrics}))
    return results
