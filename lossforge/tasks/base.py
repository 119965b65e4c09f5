"""The contract every scoring task follows.

A task trains small models with candidate losses and measures how well they behave. Tasks are *batched*:
``evaluate(losses, seed)`` trains one model per loss, all at once as a single batched model (weights with a
leading K dimension), and returns one :class:`TaskResult` per loss, in order.

Rules every task keeps, so that batched and one-by-one scoring give the same numbers and comparisons are
fair:

* **Common random numbers.** Everything random (data, noise, initial weights, minibatch order, augmentation,
  dropout masks) is drawn from generators derived from ``seed`` alone and is *shared by all K models*.
  Model k's result therefore never depends on K or on the other losses in the batch.
* **Isolation.** A loss that yields NaN/inf, no gradient or an exploding gradient fails *its* model only:
  that model is frozen (its loss masked to zero) and gets ``status="failed"`` with a reason; the others
  train on unaffected.
* **Loss interface.** A loss is any callable ``loss(input, target) -> Tensor`` returning per-sample values
  (shape ``[N]``), i.e. a torch criterion with ``reduction='none'``. Regression tasks pass predictions and
  targets of shape ``[N]``; classification tasks pass logits ``[N, C]`` and either class indices ``[N]``
  or soft targets ``[N, C]`` (mixup, CutMix, label smoothing).
* ``score`` is higher-is-better (accuracy, robust accuracy, or a negative error).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, ClassVar, Literal, Sequence

import torch

from lossforge.errors import ConfigError
from lossforge.training import EXPLODING_GRAD_NORM, LossLike, guarded_loss  # noqa: F401 - the task contract's

Status = Literal["complete", "failed"]


@dataclass
class TaskResult:
    """Outcome of training one model with one loss on one seed of one task."""

    score: float
    metrics: dict[str, float] = field(default_factory=dict)
    status: Status = "complete"
    reason: str | None = None

    @classmethod
    def failed(cls, reason: str, worst: float) -> "TaskResult":
        """A failed result carrying the task's worst score (never NaN) and why it failed."""
        return cls(score=worst, metrics={}, status="failed", reason=reason)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form for storage."""
        return {"score": self.score, "metrics": dict(self.metrics), "status": self.status, "reason": self.reason}


@dataclass
class Task:
    """Base class of tasks. Subclasses are dataclasses whose fields are the task's settings."""

    #: Registry name used in suite files (``type = "..."``).
    kind_name: ClassVar[str] = ""
    #: ``"regression"`` or ``"classification"``: how a symbolic loss is wired to model outputs.
    problem: ClassVar[Literal["regression", "classification"]] = "regression"
    #: Name of the reference loss that normalises this task's score (see ``lossforge.baselines``).
    reference: ClassVar[str] = "mse"
    #: Score given to a failed model: the worst the task can produce.
    worst_score: ClassVar[float] = -math.inf

    def evaluate(self, losses: Sequence[LossLike], seed: int, device: str = "cpu") -> list[TaskResult]:
        """Train one model per loss (batched) on ``seed`` and return their results in order."""
        raise NotImplementedError

    @property
    def scale_free(self) -> bool:
        """Whether training with ``c * L`` (any ``c > 0``) gives what training with ``L`` gives, up to the
        optimiser's epsilon: true of Adam with nothing added to the loss's gradient (no weight decay, no
        penalty), which divides each step by the gradient's own scale. False unless a task says so."""
        return False

    def notices(self) -> list[str]:
        """What a user should check in this task's settings: valid, so nothing refuses them, but perhaps not
        what was meant (e.g. an image shape that reads like channel-last). Printed when a search or a
        scoring starts; empty for most tasks."""
        return []

    def memory_per_model(self) -> int:
        """Estimated bytes each model of a batch adds while this task trains and tests it (activations
        kept for the backward pass or the test pass, weights, gradients, optimiser state); 0 when
        negligible. The search caps its chunk size with it (``lossforge.engine.memory_chunk_cap``)."""
        return 0

    def normalize(self, score: float, reference_score: float) -> float:
        """This task's score relative to the reference loss's score: 1 = as good, higher = better.

        Error-type scores (negative numbers) use ``reference / score``; accuracy-type scores (in [0, 1])
        use ``score / reference``. A failed or non-finite score normalises to 0.
        """
        if not math.isfinite(score) or not math.isfinite(reference_score):
            return 0.0
        if reference_score < 0:  # negative error: smaller magnitude is better
            return reference_score / score if score < 0 else 0.0
        return score / reference_score if reference_score > 0 else 0.0

    def shortened(self, steps_fraction: float) -> "Task":
        """This task with its training cut to ``steps_fraction`` of its length (its ``epochs`` or ``steps``
        setting, at least 1), for cheap screening; itself at 1.0 or when it has no such setting."""
        length = next((n for n in ("epochs", "steps") if n in {f.name for f in fields(self)}), None)
        if steps_fraction >= 1.0 or length is None:
            return self
        return replace(self, **{length: max(1, round(getattr(self, length) * steps_fraction))})

    def settings(self) -> dict[str, Any]:
        """The task's settings as plain data (stored in run files, shown to users)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def finite_or_worst(value: float, worst: float) -> float:
    """``value`` if it is a finite float, else ``worst``: a NaN never reaches a fitness."""
    return value if math.isfinite(value) else worst



# --- validation of task settings: one ConfigError line naming the setting and what it must be -----------


def require(ok: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` (one line naming the field and the fix) unless ``ok``."""
    if not ok:
        raise ConfigError(message)


#: The largest integer task setting (steps, epochs, widths, sizes): the tasks train small models, and a
#: setting beyond it (a hand-edited run file's ``steps = 10**9``) would run for days rather than fail.
MAX_INT_SETTING = 100_000


def check_int(value: Any, name: str, minimum: int = 1) -> None:
    """Setting ``name`` must be an int in [``minimum``, :data:`MAX_INT_SETTING`] (not a bool)."""
    require(isinstance(value, int) and not isinstance(value, bool) and minimum <= value <= MAX_INT_SETTING,
            f"{name} must be an integer in [{minimum}, {MAX_INT_SETTING}]; got {value!r}")


def check_positive_int(value: Any, name: str) -> None:
    """Setting ``name`` must be an int > 0 (not a bool)."""
    check_int(value, name, 1)


def check_range(value: Any, name: str, low: float = -math.inf, high: float = math.inf, high_open: bool = True,
                low_open: bool = False) -> None:
    """Setting ``name`` must be a finite number between ``low`` and ``high`` (bounds open or closed)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (low < value if low_open else low <= value) and (value < high if high_open else value <= high)
    interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    require(ok, f"{name} must be a finite number in {interval}; got {value!r}")


def check_choice(value: Any, name: str, choices: Sequence[str]) -> None:
    """Setting ``name`` must be one of ``choices``."""
    require(value in choices, f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def check_int_list(value: Any, name: str, allow_empty: bool) -> tuple[int, ...]:
    """Setting ``name`` must be a list/tuple of ints > 0; returned as a tuple (hashable, comparable)."""
    ok = isinstance(value, (list, tuple)) and (allow_empty or len(value) > 0)
    ok = ok and len(value) <= 64 and all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_INT_SETTING
                                         for v in value)
    require(ok, f"{name} must be a list of at most 64 integers in [1, {MAX_INT_SETTING}]; got {value!r}")
    return tuple(value)


def saved_tensor_bytes(compute: Callable[[], torch.Tensor]) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of ``compute()``: the activation memory
    of one training step, measured rather than guessed (a tensor saved twice counts twice)."""
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        compute()
    return total
