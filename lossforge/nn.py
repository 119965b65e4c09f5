"""Batched models: K independent small networks trained as one (weights with a leading K dimension).

``BatchedTrainer`` is the single place where per-model numerics are guarded during training: a model whose
loss turns non-finite, has no gradient, or whose gradient explodes is frozen and marked failed with a
reason, while the other K-1 models train on unaffected.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from lossforge.tasks.base import EXPLODING_GRAD_NORM, LossLike


class BatchedLinear(nn.Module):
    """K independent linear layers. Input ``[K, N, in]`` (or ``[N, in]``, shared by all K) -> ``[K, N, out]``.

    Each model is initialised exactly as ``torch.nn.Linear`` would be from ``generator`` and then the *same*
    weights are copied to all K models (common random numbers: model k never depends on K).
    """

    def __init__(self, n_models: int, in_features: int, out_features: int, generator: torch.Generator) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(in_features)
        weight = (torch.rand(in_features, out_features, generator=generator) * 2 - 1) * bound
        bias = (torch.rand(out_features, generator=generator) * 2 - 1) * bound
        self.weight = nn.Parameter(weight.expand(n_models, -1, -1).clone())
        self.bias = nn.Parameter(bias.expand(n_models, -1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:  # shared input: one matmul against all K weight matrices
            return torch.matmul(x, self.weight) + self.bias.unsqueeze(1)
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight)


class BatchedMLP(nn.Module):
    """K independent MLPs ``sizes[0] -> ... -> sizes[-1]`` with a given activation between layers."""

    def __init__(
        self,
        n_models: int,
        sizes: Sequence[int],
        generator: torch.Generator,
        activation: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        acts = {"relu": torch.relu, "tanh": torch.tanh, "gelu": nn.functional.gelu}
        if activation not in acts:
            raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(acts)}")
        self.activation = acts[activation]
        self.dropout = dropout
        self.layers = nn.ModuleList(
            BatchedLinear(n_models, a, b, generator) for a, b in zip(sizes[:-1], sizes[1:])
        )

    def forward(self, x: torch.Tensor, dropout_generator: torch.Generator | None = None) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = self.activation(x)
                if self.training and self.dropout > 0:
                    x = shared_dropout(x, self.dropout, dropout_generator)
        return x


def shared_dropout(x: torch.Tensor, p: float, generator: torch.Generator | None) -> torch.Tensor:
    """Dropout whose mask is drawn once for ``x[0]`` and shared by all K models (common random numbers)."""
    keep = (torch.rand(x.shape[1:], generator=generator) >= p).to(x.dtype).to(x.device)
    return x * keep / (1.0 - p)


class BatchedTrainer:
    """Runs optimisation steps for K models at once and isolates the ones whose loss misbehaves.

    ``step(outputs, target, ...)`` takes model outputs ``[K, N, ...]``, evaluates ``losses[k]`` on model k's
    output (per-sample values, averaged, optionally weighted), masks models that already failed, checks
    the new loss values and gradients, and applies the optimiser. ``failures[k]`` holds the first reason
    model k failed, or ``None``.
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
        self.max_grad_norm = max_grad_norm
        self.failures: list[str | None] = [None] * len(self.losses)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.steps = 0

    @property
    def n_models(self) -> int:
        return len(self.losses)

    @property
    def alive(self) -> torch.Tensor:
        """Boolean mask of models that have not failed."""
        return torch.tensor([f is None for f in self.failures])

    def fail(self, k: int, reason: str) -> None:
        """Mark model k failed (first reason wins)."""
        if self.failures[k] is None:
            self.failures[k] = reason

    def per_model_loss(
        self, outputs: torch.Tensor, target: torch.Tensor | Sequence[torch.Tensor]
    ) -> torch.Tensor:
        """Mean loss of each model, ``[K]``; a non-finite or raising loss fails its model (value 0)."""
        values = []
        for k, loss in enumerate(self.losses):
            tk = target[k] if isinstance(target, (list, tuple)) else target
            if self.failures[k] is not None:
                values.append(outputs[k].sum() * 0.0)
                continue
            try:
                v = loss(outputs[k], tk)
                v = v.mean() if v.dim() > 0 else v
            except (RuntimeError, ValueError, ZeroDivisionError, OverflowError) as exc:
                self.fail(k, f"loss raised {type(exc).__name__}: {exc}")
                values.append(outputs[k].sum() * 0.0)
                continue
            if not torch.isfinite(v.detach()):
                self.fail(k, f"non-finite loss value at step {self.steps}")
                v = outputs[k].sum() * 0.0
            values.append(v)
        return torch.stack(values)

    def step(self, outputs: torch.Tensor, target: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """One optimisation step of all live models; returns the per-model loss values (detached)."""
        values = self.per_model_loss(outputs, target)
        self.optimizer.zero_grad(set_to_none=False)
        values.sum().backward()
        self.check_gradients()
        self.optimizer.step()
        self.steps += 1
        return values.detach()

    def check_gradients(self) -> None:
        """Fail models with non-finite or exploding gradients and zero the gradients of failed models."""
        norms = torch.zeros(self.n_models, dtype=torch.float64)
        for p in self.params:
            if p.grad is not None:
                norms += p.grad.detach().reshape(self.n_models, -1).double().pow(2).sum(dim=1).cpu()
        norms = norms.sqrt()
        for k in range(self.n_models):
            if self.failures[k] is not None:
                continue
            if not math.isfinite(norms[k].item()):
                self.fail(k, f"non-finite gradient at step {self.steps}")
            elif self.steps == 0 and norms[k].item() == 0.0:
                self.fail(k, "no gradient with respect to the model's output")
            elif norms[k].item() > self.max_grad_norm:
                self.fail(k, f"exploding gradient (norm {norms[k].item():.3g}) at step {self.steps}")
        dead = ~self.alive
        if dead.any():
            for p in self.params:
                if p.grad is not None:
                    p.grad[dead.to(p.grad.device)] = 0.0
