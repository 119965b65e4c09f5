"""Adversarial training: FGSM, BIM/PGD, MIM and "free" adversarial training, plus robust evaluation.

Attacks work on batched models. Inputs are ``[K, N, ...]`` (one perturbation per model) and
``forward(x) -> logits [K, N, C]``; ``loss_fn(logits, target) -> [K]`` gives each model's mean loss. One
backward pass of the summed per-model losses yields every model's input gradient, because model k's loss
depends only on its own slice ``x[k]``. Random starts are drawn for one model's shape and shared by all K.

Attacks used to *evaluate* use cross-entropy whatever the candidate loss is (a fair, common yardstick);
attacks used to *train* use the candidate's own loss, through the trainer's guarded per-model loss, so a
loss that breaks while crafting an attack fails its own model only. DeepFool is not implemented: it needs
one gradient per class and step, ten times PGD's cost for the same question.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
import torch.nn.functional as F

from lossforge.tasks.base import check_positive_int, check_range, require
from lossforge.tasks.classification import (
    ClassificationTask,
    Classifier,
    Streams,
    accuracy,
)
from lossforge.tasks.data import Split
from lossforge.training import BatchedTrainer

Forward = Callable[[torch.Tensor], torch.Tensor]
PerModelLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: Training attacks: none (standard training), FGSM, BIM (PGD without random start), PGD, MIM, free AT.
ATTACKS = ("none", "fgsm", "bim", "pgd", "mim", "free")


def cross_entropy_per_model(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of each model, ``[K]``, from logits ``[K, N, C]`` and labels ``[N]`` (or soft ``[N, C]``)."""
    k, n, c = logits.shape
    expanded = target.expand(k, *target.shape).reshape(k * n, *target.shape[1:])
    return F.cross_entropy(logits.reshape(k * n, c), expanded, reduction="none").view(k, n).mean(dim=1)


def input_gradient(forward: Forward, x: torch.Tensor, target: torch.Tensor, loss_fn: PerModelLoss) -> torch.Tensor:
    """Gradient of the summed per-model losses with respect to ``x`` ``[K, N, ...]``; non-finite entries -> 0.

    Zeroing non-finite entries keeps a broken model from producing NaN inputs; only its own slice is affected.
    """
    x = x.detach().requires_grad_(True)
    total = loss_fn(forward(x), target).sum()
    (grad,) = torch.autograd.grad(total, x, allow_unused=True)
    if grad is None:
        return torch.zeros_like(x)
    return torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)


def project(x_adv: torch.Tensor, x: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Project ``x_adv`` onto the L-inf ball of radius ``epsilon`` around ``x``, intersected with [0, 1]."""
    return torch.minimum(torch.maximum(x_adv, x - epsilon), x + epsilon).clamp(0.0, 1.0)


def fgsm(
    forward: Forward,
    x: torch.Tensor,
    target: torch.Tensor,
    epsilon: float,
    loss_fn: PerModelLoss = cross_entropy_per_model,
) -> torch.Tensor:
    """FGSM (Goodfellow et al., 2015): ``clip(x + epsilon * sign(grad), 0, 1)`` for inputs ``[K, N, ...]``."""
    grad = input_gradient(forward, x, target, loss_fn)
    return (x + epsilon * grad.sign()).clamp(0.0, 1.0).detach()


def pgd(
    forward: Forward,
    x: torch.Tensor,
    target: torch.Tensor,
    epsilon: float,
    step_size: float,
    steps: int,
    loss_fn: PerModelLoss = cross_entropy_per_model,
    generator: torch.Generator | None = None,
    random_start: bool = True,
) -> torch.Tensor:
    """L-inf PGD (Madry et al., 2018); BIM (Kurakin et al., 2017) when ``random_start`` is False.

    Optionally starts at a uniform point of the epsilon-ball (one draw for ``x[0]``'s shape, shared by all K
    models), then takes ``steps`` signed-gradient steps of ``step_size``, each projected back onto the
    epsilon-ball around ``x`` and onto [0, 1].
    """
    x = x.detach()
    x_adv = x
    if random_start:
        start = (torch.rand(x.shape[1:], generator=generator) * 2 - 1) * epsilon
        x_adv = (x + start.to(x.device, x.dtype)).clamp(0.0, 1.0)
    for _ in range(steps):
        grad = input_gradient(forward, x_adv, target, loss_fn)
        x_adv = project(x_adv + step_size * grad.sign(), x, epsilon)
    return x_adv.detach()


def mim(
    forward: Forward,
    x: torch.Tensor,
    target: torch.Tensor,
    epsilon: float,
    step_size: float,
    steps: int,
    loss_fn: PerModelLoss = cross_entropy_per_model,
    decay: float = 1.0,
) -> torch.Tensor:
    """Momentum iterative method (Dong et al., 2018).

    ``g <- decay * g + grad / ||grad||_1`` (L1 norm per sample), then ``x <- project(x + step_size * sign(g))``.
    With ``decay = 0`` it is BIM.
    """
    x = x.detach()
    x_adv = x
    momentum = torch.zeros_like(x)
    for _ in range(steps):
        grad = input_gradient(forward, x_adv, target, loss_fn)
        norm = grad.abs().flatten(start_dim=2).sum(dim=2).clamp_min(1e-12)
        momentum = decay * momentum + grad / norm.view(*norm.shape, *([1] * (x.dim() - 2)))
        x_adv = project(x_adv + step_size * momentum.sign(), x, epsilon)
    return x_adv.detach()


@dataclass
class AdversarialTask(ClassificationTask):
    """Adversarial training, tested against a PGD attack.

    **Score: ``robust_weight * acc_pgd + (1 - robust_weight) * acc_clean``; the default ``robust_weight = 1``
    makes it the robust accuracy under an L-inf PGD attack** (cross-entropy, radius ``eval_epsilon`` (default
    ``epsilon``), ``eval_steps`` steps of ``2.5 * eps / steps``, random start). Metrics: ``acc_clean``,
    ``acc_fgsm``, ``acc_pgd``.

    Training: every minibatch is replaced by its adversarial version under ``attack`` (see :data:`ATTACKS`)
    crafted with the candidate loss at radius ``epsilon``: ``"fgsm"``; ``"bim"`` / ``"pgd"`` / ``"mim"`` with
    ``attack_steps`` steps of ``step_size`` (default ``2.5 * epsilon / attack_steps``) and ``mim_decay``;
    ``"free"`` (Shafahi et al., 2019) replays each minibatch ``free_replays`` times, each replay updating the
    weights and the carried-over perturbation from the same backward pass, over ``ceil(epochs /
    free_replays)`` epochs (so it costs about as much as standard training). ``"none"``: standard training.
    Label noise defaults to none here (the task asks which loss trains robustly, not which ignores wrong
    labels), and epochs to 20 (each step costs ``attack_steps + 1`` passes).
    """

    kind_name: ClassVar[str] = "adversarial"

    noise: str = "none"
    epochs: int = 20
    attack: str = "pgd"
    epsilon: float = 0.1
    attack_steps: int = 3
    step_size: float | None = None
    mim_decay: float = 1.0
    free_replays: int = 4
    eval_epsilon: float | None = None
    eval_steps: int = 10
    robust_weight: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.attack in ATTACKS, f"attack must be one of {list(ATTACKS)}; got {self.attack!r}")
        check_range(self.epsilon, "epsilon", 0.0, 1.0, high_open=False)
        check_positive_int(self.attack_steps, "attack_steps")
        if self.step_size is not None:
            check_range(self.step_size, "step_size", 1e-6, 1.0, high_open=False)
        check_range(self.mim_decay, "mim_decay", 0.0, 10.0, high_open=False)
        check_positive_int(self.free_replays, "free_replays")
        if self.eval_epsilon is not None:
            check_range(self.eval_epsilon, "eval_epsilon", 0.0, 1.0, high_open=False)
        check_positive_int(self.eval_steps, "eval_steps")
        check_range(self.robust_weight, "robust_weight", 0.0, 1.0, high_open=False)

    def epochs_to_run(self) -> int:
        if self.attack == "free":
            return math.ceil(self.epochs / self.free_replays)
        return self.epochs

    def craft(
        self, model: Classifier, trainer: BatchedTrainer, x: torch.Tensor, y: torch.Tensor, streams: Streams
    ) -> torch.Tensor:
        """Adversarial version ``[K, N, ...]`` of minibatch ``x`` under the training attack and candidate losses."""
        xk = x.expand(trainer.n_models, *x.shape)
        eps = self.epsilon
        step = self.step_size if self.step_size is not None else 2.5 * eps / self.attack_steps
        # eval mode: the attack should see the deterministic network (no dropout draws, no batch-norm updates)
        model.eval()
        try:
            if self.attack == "fgsm":
                return fgsm(model, xk, y, eps, trainer.per_model_loss)
            if self.attack == "mim":
                return mim(model, xk, y, eps, step, self.attack_steps, trainer.per_model_loss, self.mim_decay)
            return pgd(model, xk, y, eps, step, self.attack_steps, trainer.per_model_loss,
                       streams.attack, random_start=self.attack == "pgd")
        finally:
            model.train()

    def train_step(
        self, model: Classifier, trainer: BatchedTrainer, x: torch.Tensor, y: torch.Tensor, streams: Streams
    ) -> None:
        if self.attack == "none":
            super().train_step(model, trainer, x, y, streams)
        elif self.attack == "free":
            self.free_step(model, trainer, x, y, streams)
        else:
            trainer.step(model(self.craft(model, trainer, x, y, streams), streams.dropout), y)

    def free_step(
        self, model: Classifier, trainer: BatchedTrainer, x: torch.Tensor, y: torch.Tensor, streams: Streams
    ) -> None:
        """Free adversarial training on one minibatch: ``free_replays`` weight updates, each also moving the
        perturbation by ``epsilon * sign(input gradient)``; the perturbation carries over to the next batch."""
        n = len(y)
        delta = streams.state.get("free_delta")
        if delta is None or delta.shape[1] < n:
            delta = torch.zeros(trainer.n_models, *x.shape, device=x.device, dtype=x.dtype)
            streams.state["free_delta"] = delta
        part = delta[:, :n]
        for _ in range(self.free_replays):
            x_adv = (x + part).clamp(0.0, 1.0).requires_grad_(True)
            trainer.step(model(x_adv, streams.dropout), y)
            grad = torch.nan_to_num(x_adv.grad, nan=0.0, posinf=0.0, neginf=0.0)
            part = (part + self.epsilon * grad.sign()).clamp(-self.epsilon, self.epsilon)
        delta[:, :n] = part

    def extra_metrics(self, model: Classifier, data: Split, streams: Streams) -> dict[str, torch.Tensor]:
        k = next(model.parameters()).shape[0]  # every batched parameter leads with K
        x = data.x_test.expand(k, *data.x_test.shape)
        eps = self.eval_epsilon if self.eval_epsilon is not None else self.epsilon
        x_fgsm = fgsm(model, x, data.y_test, eps)
        x_pgd = pgd(model, x, data.y_test, eps, 2.5 * eps / self.eval_steps, self.eval_steps,
                    generator=streams.evaluation)
        with torch.no_grad():
            return {"acc_fgsm": accuracy(model(x_fgsm), data.y_test), "acc_pgd": accuracy(model(x_pgd), data.y_test)}

    def score(self, metrics: dict[str, float]) -> float:
        return self.robust_weight * metrics["acc_pgd"] + (1.0 - self.robust_weight) * metrics["acc_clean"]
