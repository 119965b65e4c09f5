"""Training K models at once, each with its own candidate loss, behind one interface and one guard.

* :class:`FailureLedger` is the guard both trainers share: which of the K models failed, why, and at which
  step. A model whose loss turns non-finite, raises, has no gradient or an exploding gradient is frozen
  (its gradient zeroed, its loss counted as 0) while the other K-1 models train on unaffected. The reason
  strings are written here only, so the two trainers report the same reasons at the same steps.
* :class:`Trainer` is what a task calls: ``fit(inputs, targets, steps, lr_at, ...) -> FitResult``.
  :class:`BatchedTrainer` trains any batched torch model with autograd and a torch optimiser, one
  :meth:`~BatchedTrainer.step` at a time (``penalty`` adds a regulariser without bypassing the guard);
  :class:`lossforge.numpy_mlp.NumpyMLPTrainer` trains a :class:`~lossforge.models.BatchedMLP` in numpy.
* :func:`make_trainer` picks the first trainer of a preference list that supports the model.

This module knows models and losses, never tasks (the task contract imports it, not the reverse).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import numpy as np
import torch
from torch import nn

from lossforge.errors import ConfigError
from lossforge.loss import SymbolicLoss, class_probabilities

LossLike = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: Gradient norm (per model, per step) above which a loss counts as exploding.
EXPLODING_GRAD_NORM = 1e6

#: Exceptions of a loss that fail its model (anything else is wrapped by :func:`guarded_loss`).
NUMERIC_ERRORS = (RuntimeError, ValueError, ZeroDivisionError, OverflowError)


def check_device(device: str, here: bool = True) -> None:
    """A ConfigError unless ``device`` is a torch device string and, ``here``, one this process can train on
    (before, a bad or absent device surfaced as the reference loss failing, "check the suite's settings").
    ``here=False`` for a remote cluster: its workers, not this machine, need the GPU."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"device {device!r} is not a torch device; use e.g. cpu, cuda, cuda:1 or mps") from None
    if parsed.type == "meta":  # meta tensors hold no values: the reference loss "failed", the run was left behind
        raise ConfigError(f"device {device!r} holds no values and cannot train; use e.g. cpu, cuda, cuda:1 or mps")
    if not here:
        return
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device {device!r}: this torch ({torch.__version__}) sees no CUDA GPU; use --device "
                              "cpu, or install a CUDA build of torch (TORCH_SPEC, see the README)")
        if parsed.index is not None and parsed.index >= count:
            raise ConfigError(f"device {device!r}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {device!r}: MPS is not available to this torch; use --device cpu")


def guarded_loss(loss: LossLike) -> LossLike:
    """``loss`` made safe for the trainers, which only catch numeric errors: any exception it
    raises is re-raised as a ``RuntimeError`` naming the original type, and an output that does not depend
    on the prediction is kept in the graph, so that either fails this loss's model, not the whole batch."""

    def guarded(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        try:
            value = torch.as_tensor(loss(pred, target), device=pred.device)
        except NUMERIC_ERRORS:
            raise
        except Exception as exc:  # candidate losses are arbitrary code; the reason is kept
            raise RuntimeError(f"{type(exc).__name__}: {exc}") from exc
        if pred.requires_grad and not value.requires_grad:
            # backward() needs a graph; the trainer then fails the model for having no gradient.
            value = value + pred.sum() * 0.0
        return value

    return guarded


class FailureLedger:
    """Which of K models failed, and the first reason each failed, shared by every trainer.

    ``failures[k]`` is None while model k trains; ``dead`` is the same fact as a numpy mask and
    ``dead_tensor`` as a torch mask (one buffer, two views). The ``*_at`` methods write the reasons.
    """

    def __init__(self, n_models: int, max_grad_norm: float = EXPLODING_GRAD_NORM) -> None:
        self.max_grad_norm = max_grad_norm
        self.failures: list[str | None] = [None] * n_models
        self.dead = np.zeros(n_models, dtype=bool)
        self.dead_tensor = torch.from_numpy(self.dead)  # shares memory with `dead`

    @property
    def n_models(self) -> int:
        return len(self.failures)

    @property
    def any_failed(self) -> bool:
        return bool(self.dead.any())

    def alive(self) -> torch.Tensor:
        """Boolean torch mask of the models that have not failed (a copy)."""
        return ~self.dead_tensor

    def fail(self, k: int, reason: str) -> None:
        """Mark model k failed (the first reason wins)."""
        if self.failures[k] is None:
            self.failures[k] = reason
            self.dead[k] = True

    def loss_raised(self, k: int, exc: BaseException) -> None:
        self.fail(k, f"loss raised {type(exc).__name__}: {exc}")

    def check_values(self, finite: np.ndarray, step: int) -> None:
        """Fail the live models whose loss value at ``step`` is not finite (``finite``: bool ``[K]``)."""
        for k in np.flatnonzero(~finite & ~self.dead):
            self.fail(int(k), f"non-finite loss value at step {step}")

    def check_gradient_norms(self, norms: np.ndarray, step: int) -> None:
        """Fail the live models whose gradient norm (float64 ``[K]``) at ``step`` is non-finite, above
        ``max_grad_norm``, or zero at the first step (the loss does not depend on the model's output)."""
        bad = ~self.dead & (~np.isfinite(norms) | (norms > self.max_grad_norm) | ((norms == 0) & (step == 0)))
        for k in np.flatnonzero(bad):  # rare: only failing models pay for a Python loop
            norm = float(norms[k])
            if not math.isfinite(norm):
                self.fail(int(k), f"non-finite gradient at step {step}")
            elif norm == 0.0:
                self.fail(int(k), "no gradient with respect to the model's output")
            else:
                self.fail(int(k), f"exploding gradient (norm {norm:.3g}) at step {step}")


@dataclass
class FitResult:
    """Outcome of :meth:`Trainer.fit`: the trained models, their failures and optional history.

    ``train_loss[s, m]`` is model m's mean training loss at step s; ``test_rmse[s, m]`` its RMSE against the
    test targets just before step s's update.
    """

    model: nn.Module
    failures: list[str | None]
    train_loss: torch.Tensor | None = None
    test_rmse: torch.Tensor | None = None


class Trainer(Protocol):
    """Full-batch training of K one-output models, model k with loss k, under a :class:`FailureLedger`."""

    ledger: FailureLedger

    @classmethod
    def supports(cls, model: nn.Module, device: str | torch.device) -> bool:
        """Whether this trainer can train ``model`` on ``device``."""

    @classmethod
    def create(cls, model: nn.Module, losses: Sequence[LossLike], *, lr: float) -> "Trainer":
        """A trainer of ``model`` with Adam at learning rate ``lr`` (``fit`` may change it per step)."""

    def fit(self, inputs: torch.Tensor, targets: torch.Tensor, steps: int, lr_at: Callable[[int], float],
            record: bool = False, x_test: torch.Tensor | None = None,
            y_test: torch.Tensor | None = None) -> FitResult:
        """Train for ``steps`` steps on inputs ``[K, N, in]`` and targets ``[K, N]`` with learning rate
        ``lr_at(step)``. With ``record``, keep the per-step losses and, given a test set, the test RMSEs."""


def make_trainer(preference: Sequence[type[Trainer]], model: nn.Module, losses: Sequence[LossLike], *,
                 lr: float, device: str | torch.device) -> Trainer:
    """The first trainer of ``preference`` that supports ``model`` on ``device``."""
    for cls in preference:
        if cls.supports(model, device):
            return cls.create(model, losses, lr=lr)
    raise ValueError(f"no trainer of {[cls.__name__ for cls in preference]} supports {type(model).__name__}")


def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Predictions ``[K, N]`` of all K one-output models on shared inputs ``x`` (``[N, in]``), without gradients."""
    with torch.no_grad():
        return model(x).squeeze(-1)


def rmse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Root mean squared error over the last dimension, in float64 so that large errors stay finite."""
    return (pred.double() - target.double()).pow(2).mean(-1).sqrt()


class BatchedTrainer:
    """Runs optimisation steps for K models at once with autograd and isolates the ones whose loss misbehaves.

    ``step(outputs, target, ...)`` takes model outputs ``[K, N, ...]``, evaluates ``losses[k]`` on model k's
    output (per-sample values, averaged), masks models that already failed, checks the new loss values and
    gradients, and applies the optimiser. ``failures[k]`` holds the first reason model k failed, or ``None``.
    """

    def __init__(
        self,
        model: nn.Module,
        losses: Sequence[LossLike],
        optimizer: torch.optim.Optimizer,
        max_grad_norm: float = EXPLODING_GRAD_NORM,
    ) -> None:
        self.model = model
        self.losses = list(losses)
        self.optimizer = optimizer
        self.ledger = FailureLedger(len(self.losses), max_grad_norm)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.steps = 0

    @classmethod
    def supports(cls, model: nn.Module, device: str | torch.device) -> bool:
        return True  # any torch model on any device

    @classmethod
    def create(cls, model: nn.Module, losses: Sequence[LossLike], *, lr: float) -> "BatchedTrainer":
        # foreach, not fused: the fused CPU kernel rounds a tensor's elements differently depending on its
        # size, so model k's update would depend on K (common random numbers require it not to).
        optimizer = torch.optim.Adam(model.parameters(), lr=lr, foreach=True)
        return cls(model, [guarded_loss(loss) for loss in losses], optimizer)

    @property
    def n_models(self) -> int:
        return len(self.losses)

    @property
    def failures(self) -> list[str | None]:
        return self.ledger.failures

    @property
    def alive(self) -> torch.Tensor:
        """Boolean mask of models that have not failed."""
        return self.ledger.alive()

    def fail(self, k: int, reason: str) -> None:
        """Mark model k failed (first reason wins)."""
        self.ledger.fail(k, reason)

    def per_model_loss(
        self, outputs: torch.Tensor, target: torch.Tensor | Sequence[torch.Tensor]
    ) -> torch.Tensor:
        """Mean loss of each model, ``[K]``; a non-finite or raising loss fails its model (value 0)."""
        values = []
        probabilities = None  # softmax of all K models' logits, computed once when a symbolic loss needs it
        log_probabilities = None  # their log_softmax, once, when a loss takes log(y_pred) (exact cross-entropy)
        shared_target: tuple[torch.Tensor, torch.Tensor] | None = None  # (target, its one-hot form)
        for k, loss in enumerate(self.losses):
            tk = target[k] if isinstance(target, (list, tuple)) else target
            if self.failures[k] is not None:
                values.append(outputs[k].sum() * 0.0)
                continue
            try:
                if isinstance(loss, SymbolicLoss) and loss.is_classification(outputs[k], tk):
                    # The same numbers as loss(outputs[k], tk), without a softmax and a one-hot per model.
                    if probabilities is None:
                        probabilities = torch.softmax(outputs, dim=2)
                    if shared_target is None or shared_target[0] is not tk:
                        shared_target = (tk, class_probabilities(outputs[k], tk, probabilities[k])[1])
                    if log_probabilities is None and loss.uses_log_probabilities:
                        log_probabilities = torch.log_softmax(outputs, dim=2)
                    v = loss.from_class_probabilities(probabilities[k], shared_target[1],
                                                      None if log_probabilities is None else log_probabilities[k])
                else:
                    v = loss(outputs[k], tk)
                v = v.mean() if v.dim() > 0 else v
            except NUMERIC_ERRORS as exc:
                self.ledger.loss_raised(k, exc)
                v = outputs[k].sum() * 0.0
            values.append(v)
        stacked = torch.stack(values)
        finite = torch.isfinite(stacked.detach())
        if not bool(finite.all()):  # one check for all K models, not one synchronisation each
            self.ledger.check_values(finite.cpu().numpy(), self.steps)
            # the failed models' gradients may be NaN; check_gradients zeroes them before the update
            stacked = torch.where(finite, stacked, torch.zeros_like(stacked))
        return stacked

    def step(
        self,
        outputs: torch.Tensor,
        target: torch.Tensor | Sequence[torch.Tensor],
        penalty: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One optimisation step of all live models; returns the per-model loss values (detached).

        ``penalty`` (``[K]``, in the graph of ``outputs``) is added to each live model's loss after the
        gradient check: the check sees the candidate loss's gradient alone, so a loss without a gradient
        still fails its model however the penalty behaves.
        """
        values = self.per_model_loss(outputs, target)
        self.optimizer.zero_grad(set_to_none=False)
        values.sum().backward(retain_graph=penalty is not None)
        self.check_gradients()
        if penalty is not None:
            alive = self.alive.to(penalty.device)
            torch.where(alive, penalty, torch.zeros_like(penalty)).sum().backward()
        self.optimizer.step()
        self.steps += 1
        return values.detach()

    def check_gradients(self) -> None:
        """Fail models with non-finite or exploding gradients and zero the gradients of failed models."""
        # Few, large ops: this runs every step for all K models.
        squares = [p.grad.detach().reshape(self.n_models, -1).pow(2).sum(dim=1) for p in self.params
                   if p.grad is not None]
        norms = torch.stack(squares).sum(dim=0).double().sqrt().cpu()
        self.ledger.check_gradient_norms(norms.numpy(), self.steps)
        if self.ledger.any_failed:
            for p in self.params:
                if p.grad is not None:
                    p.grad[self.ledger.dead_tensor.to(p.grad.device)] = 0.0

    def fit(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        steps: int,
        lr_at: Callable[[int], float],
        record: bool = False,
        x_test: torch.Tensor | None = None,
        y_test: torch.Tensor | None = None,
    ) -> FitResult:
        """Full-batch training of one-output models (see :class:`Trainer`)."""
        target_list = list(targets.unbind(0))
        train_loss, test_rmse = [], []
        self.model.train()
        for step in range(steps):
            self.optimizer.param_groups[0]["lr"] = lr_at(step)
            if record and x_test is not None and y_test is not None:
                test_rmse.append(rmse(predict(self.model, x_test), y_test))
            values = self.step(self.model(inputs).squeeze(-1), target_list)
            if record:
                train_loss.append(values)
        return FitResult(
            self.model,
            list(self.failures),
            torch.stack(train_loss) if train_loss else None,
            torch.stack(test_rmse) if test_rmse else None,
        )
