"""Batched models: K independent small networks computed as one (weights with a leading K dimension).

Every model here copies the *same* initial weights to all K models and draws its random masks (dropout,
DropBlock) once for all of them, so model k never depends on K (common random numbers). The trainers
(:mod:`lossforge.training`, :mod:`lossforge.numpy_mlp`) train them; nothing here knows about losses.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import torch
from torch import nn


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
    """K independent MLPs ``sizes[0] -> ... -> sizes[-1]`` with a given activation between layers.

    Besides ``forward``, a trainer that does not use autograd (:class:`lossforge.numpy_mlp.NumpyMLPTrainer`)
    reads the model through :attr:`n_models`, :attr:`sizes`, :attr:`activation_name`, :attr:`dropout` and
    :meth:`layer_parameters`, and writes trained weights back through the tensors the latter returns.
    """

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
        self.activation_name = activation
        self.dropout = dropout
        self.layers = nn.ModuleList(
            BatchedLinear(n_models, a, b, generator) for a, b in zip(sizes[:-1], sizes[1:])
        )

    @property
    def n_models(self) -> int:
        """K, the number of models computed at once."""
        return self.layers[0].weight.shape[0]

    @property
    def sizes(self) -> tuple[int, ...]:
        """Layer widths ``(inputs, hidden..., outputs)``."""
        return (self.layers[0].weight.shape[1], *(layer.weight.shape[2] for layer in self.layers))

    def layer_parameters(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(weight [K, in, out], bias [K, out])`` of each linear layer, input to output: the parameters
        themselves (a trainer may copy trained values into them under ``torch.no_grad``). The layer computes
        ``x @ weight + bias``, then the activation (all layers but the last)."""
        return [(layer.weight, layer.bias) for layer in self.layers]

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
