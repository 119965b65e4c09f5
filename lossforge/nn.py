"""Batched models: K independent small networks trained as one (weights with a leading K dimension).

``BatchedTrainer`` is the single place where per-model numerics are guarded during training: a model whose
loss turns non-finite, has no gradient, or whose gradient explodes is frozen and marked failed with a
reason, while the other K-1 models train on unaffected.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import torch
from torch import nn

from lossforge.loss import SymbolicLoss, class_probabilities
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
        n_models, in_features, out_features = self.weight.shape
        if x.dim() == 2:  # input shared by all K models
            x = x.unsqueeze(0).expand(n_models, -1, -1)
        if in_features == 1 or out_features == 1:
            # A batched GEMM with a dimension of one takes K-dependent kernel paths on CPU that round
            # differently; this elementwise form gives model k the same bits whatever K is.
            return (x.unsqueeze(-1) * self.weight.unsqueeze(1)).sum(-2) + self.bias.unsqueeze(1)
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
        self._dead = torch.zeros(len(self.losses), dtype=torch.bool)  # kept in step with `failures`
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.steps = 0

    @property
    def n_models(self) -> int:
        return len(self.losses)

    @property
    def alive(self) -> torch.Tensor:
        """Boolean mask of models that have not failed."""
        return ~self._dead

    def fail(self, k: int, reason: str) -> None:
        """Mark model k failed (first reason wins)."""
        if self.failures[k] is None:
            self.failures[k] = reason
            self._dead[k] = True

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
            except (RuntimeError, ValueError, ZeroDivisionError, OverflowError) as exc:
                self.fail(k, f"loss raised {type(exc).__name__}: {exc}")
                v = outputs[k].sum() * 0.0
            values.append(v)
        stacked = torch.stack(values)
        finite = torch.isfinite(stacked.detach())
        if not bool(finite.all()):  # one check for all K models, not one synchronisation each
            for k in (~finite).nonzero().flatten().tolist():
                self.fail(k, f"non-finite loss value at step {self.steps}")
            # the failed models' gradients may be NaN; check_gradients zeroes them before the update
            stacked = torch.where(finite, stacked, torch.zeros_like(stacked))
        return stacked

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
        # Few, large ops: this runs every step for all K models.
        squares = [p.grad.detach().reshape(self.n_models, -1).pow(2).sum(dim=1) for p in self.params
                   if p.grad is not None]
        norms = torch.stack(squares).sum(dim=0).double().sqrt().cpu()
        bad = self.alive & (~torch.isfinite(norms) | (norms > self.max_grad_norm) | ((norms == 0) & (self.steps == 0)))
        for k in bad.nonzero().flatten().tolist():  # rare: only failing models pay for a Python loop
            norm = norms[k].item()
            if not math.isfinite(norm):
                self.fail(k, f"non-finite gradient at step {self.steps}")
            elif norm == 0.0:
                self.fail(k, "no gradient with respect to the model's output")
            else:
                self.fail(k, f"exploding gradient (norm {norm:.3g}) at step {self.steps}")
        if any(f is not None for f in self.failures):
            for p in self.params:
                if p.grad is not None:
                    p.grad[self._dead.to(p.grad.device)] = 0.0


# --- Batched convolutional models, batch norm and DropBlock -------------------------------------------------


class BatchedConv2d(nn.Module):
    """K independent 2-D convolutions (stride 1, zero "same" padding, odd square kernel).

    Input ``[K, N, C, H, W]`` (or ``[N, C, H, W]``, shared by all K) -> ``[K, N, out, H, W]``. Each model runs
    its own ``conv2d`` call: a grouped convolution (``groups=K``) is no faster on CPU for these sizes, and its
    rounding differs from a single model's, which after a few hundred steps changes predictions, so the
    batched result would depend on K. Initialised like ``torch.nn.Conv2d`` from ``generator``, with the same
    weights copied to all K models.
    """

    def __init__(
        self, n_models: int, in_channels: int, out_channels: int, kernel_size: int, generator: torch.Generator
    ) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd for 'same' padding; got {kernel_size}")
        bound = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
        weight = (torch.rand(out_channels, in_channels, kernel_size, kernel_size, generator=generator) * 2 - 1) * bound
        bias = (torch.rand(out_channels, generator=generator) * 2 - 1) * bound
        self.weight = nn.Parameter(weight.expand(n_models, -1, -1, -1, -1).clone())
        self.bias = nn.Parameter(bias.expand(n_models, -1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = self.weight.shape[-1] // 2
        inputs = [x] * len(self.weight) if x.dim() == 4 else x.unbind(0)
        return torch.stack(
            [nn.functional.conv2d(xk, w, b, padding=pad) for xk, w, b in zip(inputs, self.weight, self.bias)]
        )


class BatchedBatchNorm(nn.Module):
    """Batch normalisation with separate statistics and affine parameters for each of K models.

    Input ``[K, N, F]`` or ``[K, N, C, H, W]``: normalised over the samples (and positions) of each model
    separately, per feature/channel (dim 2). Running statistics ``[K, F]`` are used in eval mode.
    """

    def __init__(self, n_models: int, features: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.momentum = momentum
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(n_models, features))
        self.bias = nn.Parameter(torch.zeros(n_models, features))
        self.register_buffer("running_mean", torch.zeros(n_models, features))
        self.register_buffer("running_var", torch.ones(n_models, features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = (1,) + tuple(range(3, x.dim()))
        shape = (x.shape[0], 1, x.shape[2]) + (1,) * (x.dim() - 3)
        if self.training:
            mean = x.mean(dim=dims)
            var = x.var(dim=dims, unbiased=False)
            count = x.numel() // (x.shape[0] * x.shape[2])
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach(), self.momentum)
                self.running_var.lerp_(var.detach() * count / max(count - 1, 1), self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        scale = self.weight / torch.sqrt(var + self.eps)
        return (x - mean.view(shape)) * scale.view(shape) + self.bias.view(shape)


class BatchedNormMLP(BatchedMLP):
    """:class:`BatchedMLP` with per-model batch norm after every hidden linear layer (before the activation)."""

    def __init__(
        self,
        n_models: int,
        sizes: Sequence[int],
        generator: torch.Generator,
        activation: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__(n_models, sizes, generator, activation, dropout)
        self.norms = nn.ModuleList(BatchedBatchNorm(n_models, size) for size in sizes[1:-1])

    def forward(self, x: torch.Tensor, dropout_generator: torch.Generator | None = None) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = self.activation(self.norms[i](x))
                if self.training and self.dropout > 0:
                    x = shared_dropout(x, self.dropout, dropout_generator)
        return x


@functools.lru_cache(maxsize=None)
def _dropblock_gamma(height: int, width: int, block_size: int, rate: float) -> float:
    """Seed probability at which DropBlock drops a fraction ``rate`` of positions *in expectation*.

    Position p is dropped unless all of the ``c_p`` seed positions whose block covers it stay off, so the
    expected dropped fraction is ``mean_p(1 - (1 - gamma) ** c_p)``; it rises with gamma and is solved by
    bisection. (The paper's closed form ignores overlapping blocks and overshoots on small maps.)
    """
    seeds = torch.ones(1, 1, height - block_size + 1, width - block_size + 1, dtype=torch.float64)
    pad = block_size - 1
    cover = nn.functional.avg_pool2d(nn.functional.pad(seeds, (pad, pad, pad, pad)), block_size, stride=1)
    cover = cover * block_size * block_size
    lo, hi = 0.0, 1.0
    for _ in range(60):
        gamma = (lo + hi) / 2
        if (1 - (1 - gamma) ** cover).mean().item() < rate:
            lo = gamma
        else:
            hi = gamma
    return (lo + hi) / 2


def drop_block(x: torch.Tensor, rate: float, block_size: int, generator: torch.Generator | None) -> torch.Tensor:
    """DropBlock (Ghiasi et al., 2018) on feature maps ``[K, N, C, H, W]``: zero contiguous squares.

    Block seeds are drawn so that about ``rate`` of the positions are dropped (in expectation, see
    :func:`_dropblock_gamma`); each seed zeroes the ``block_size`` x ``block_size`` square starting at it, and
    the survivors are rescaled by ``numel / kept``. The mask is drawn once for ``x[0]`` and shared by all K
    models (common random numbers). ``block_size`` is capped at the map size.
    """
    n, c, h, w = x.shape[-4:]
    size = min(block_size, h, w)
    gamma = _dropblock_gamma(h, w, size, rate)
    seeds = (torch.rand(n, c, h - size + 1, w - size + 1, generator=generator) < gamma).to(x.dtype)
    pad = size - 1
    dropped = nn.functional.max_pool2d(nn.functional.pad(seeds, (pad, pad, pad, pad)), size, stride=1)
    keep = (1.0 - dropped).to(x.device)
    return x * keep * (keep.numel() / keep.sum().clamp_min(1.0))


class BatchedCNN(nn.Module):
    """K independent small CNNs for ``[N, C, H, W]`` images (shared) or ``[K, N, C, H, W]`` (one per model).

    Each block is conv3x3 -> [batch norm] -> ReLU -> [DropBlock] -> 2x2 max-pool; then the flattened maps go
    through linear layers ``hidden..., n_classes`` with ReLU and [dropout] between. Output ``[K, N, classes]``.
    """

    def __init__(
        self,
        n_models: int,
        in_channels: int,
        image_shape: tuple[int, int],
        n_classes: int,
        generator: torch.Generator,
        channels: Sequence[int] = (16, 32),
        hidden: Sequence[int] = (),
        dropout: float = 0.0,
        dropblock: float = 0.0,
        dropblock_size: int = 3,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        self.dropout = dropout
        self.dropblock = dropblock
        self.dropblock_size = dropblock_size
        sizes = [in_channels, *channels]
        self.convs = nn.ModuleList(BatchedConv2d(n_models, a, b, 3, generator) for a, b in zip(sizes[:-1], sizes[1:]))
        self.norms = nn.ModuleList(BatchedBatchNorm(n_models, b) for b in channels) if batch_norm else None
        h, w = image_shape
        for _ in channels:
            h, w = h // 2, w // 2
        if h == 0 or w == 0:
            raise ValueError(f"{len(channels)} pooling blocks shrink a {image_shape} image to nothing")
        self.head = BatchedMLP(n_models, [sizes[-1] * h * w, *hidden, n_classes], generator, dropout=dropout)

    def forward(self, x: torch.Tensor, dropout_generator: torch.Generator | None = None) -> torch.Tensor:
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if self.norms is not None:
                x = self.norms[i](x)
            x = torch.relu(x)
            if self.training and self.dropblock > 0:
                x = drop_block(x, self.dropblock, self.dropblock_size, dropout_generator)
            k, n, c, h, w = x.shape
            x = nn.functional.max_pool2d(x.reshape(k * n, c, h, w), 2).reshape(k, n, c, h // 2, w // 2)
        return self.head(x.flatten(start_dim=2), dropout_generator)
