"""Input-data procedures: augmentation during training, corrupted inputs at test time.

Cutout, CutMix, Mixup, random rotation/zoom and Gaussian noise injection are written in plain torch rather
than taken from torchvision or albumentations because (1) that adds no dependency (and nothing that could
replace the pinned torch), (2) each transform works on a whole batch ``[N, C, H, W]`` in a few tensor ops,
and (3) every draw comes from an explicit ``torch.Generator``, so one seed gives the same augmented batch
to all K models and on every run.

Images are ``[N, C, H, W]`` in [0, 1]. Transforms that mix samples (CutMix, Mixup) take and return soft
targets ``[N, C]`` (use :func:`one_hot` first); the others leave the targets alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from lossforge.tasks.base import check_positive_int, check_range, require
from lossforge.tasks.classification import (
    ClassificationTask,
    Classifier,
    Streams,
    accuracy,
)
from lossforge.tasks.data import IMAGE_SHAPES, Split

AUGMENTATIONS = ("cutout", "cutmix", "mixup", "affine", "noise")
#: Augmentations that mix two samples and therefore need soft targets.
MIXING = ("cutmix", "mixup")
#: Augmentations that move pixels: they need images.
IMAGE_AUGMENTATIONS = ("cutout", "cutmix", "affine")


def one_hot(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Class indices ``[N]`` -> float32 one-hot targets ``[N, C]``."""
    return F.one_hot(labels, n_classes).to(torch.float32)


def sample_beta(alpha: float, generator: torch.Generator) -> float:
    """One draw from Beta(alpha, alpha), driven by ``generator`` (torch's Beta sampler takes none)."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def cutout(x: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Cutout (DeVries & Taylor, 2017): zero one ``size`` x ``size`` square per image, in all channels.

    The square lies wholly inside the image (top-left corner uniform over the valid positions), so exactly
    ``size**2`` pixels of each image are zeroed.
    """
    n, _, h, w = x.shape
    top = torch.randint(0, h - size + 1, (n, 1), generator=generator).to(x.device)
    left = torch.randint(0, w - size + 1, (n, 1), generator=generator).to(x.device)
    rows = torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device)
    in_rows = (rows >= top) & (rows < top + size)  # [N, H]
    in_cols = (cols >= left) & (cols < left + size)  # [N, W]
    patch = in_rows[:, :, None] & in_cols[:, None, :]
    return x * (~patch).unsqueeze(1).to(x.dtype)


def cutmix(
    x: torch.Tensor, targets: torch.Tensor, alpha: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """CutMix (Yun et al., 2019): paste a box from a shuffled partner into each image.

    One ``lam ~ Beta(alpha, alpha)`` and one box (side ``sqrt(1 - lam)`` of the image's, wholly inside it)
    per batch, as in the paper. Soft targets mix in proportion to area: the partner's weight is the box's
    exact pixel fraction.
    """
    n, _, h, w = x.shape
    lam = sample_beta(alpha, generator)
    partner = torch.randperm(n, generator=generator).to(x.device)
    ratio = math.sqrt(1.0 - lam)
    bh, bw = int(round(h * ratio)), int(round(w * ratio))
    top = int(torch.randint(0, h - bh + 1, (1,), generator=generator))
    left = int(torch.randint(0, w - bw + 1, (1,), generator=generator))
    mixed = x.clone()
    mixed[:, :, top : top + bh, left : left + bw] = x[partner, :, top : top + bh, left : left + bw]
    area = bh * bw / (h * w)
    return mixed, (1.0 - area) * targets + area * targets[partner]


def mixup(
    x: torch.Tensor, targets: torch.Tensor, alpha: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup (Zhang et al., 2018): ``lam * a + (1 - lam) * b`` for inputs and soft targets, one ``lam`` per batch."""
    lam = sample_beta(alpha, generator)
    partner = torch.randperm(len(x), generator=generator).to(x.device)
    return lam * x + (1.0 - lam) * x[partner], lam * targets + (1.0 - lam) * targets[partner]


def rotate_zoom(x: torch.Tensor, degrees: torch.Tensor, zoom: torch.Tensor) -> torch.Tensor:
    """Rotate each image by ``degrees[i]`` and scale it by ``zoom[i]`` about its centre (bilinear, zero fill)."""
    angle = degrees.to(x.device, x.dtype) * (math.pi / 180.0)
    inv = 1.0 / zoom.to(x.device, x.dtype)  # affine_grid maps output to input coordinates
    cos, sin = torch.cos(angle) * inv, torch.sin(angle) * inv
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_affine(
    x: torch.Tensor, max_rotation: float, max_zoom: float, generator: torch.Generator
) -> torch.Tensor:
    """Random rotation (uniform in +-``max_rotation`` degrees) and zoom (uniform in 1 +- ``max_zoom``) per image."""
    n = len(x)
    degrees = (torch.rand(n, generator=generator) * 2 - 1) * max_rotation
    zoom = 1.0 + (torch.rand(n, generator=generator) * 2 - 1) * max_zoom
    return rotate_zoom(x, degrees, zoom)


def gaussian_noise(x: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    """``x + std * N(0, 1)``, clipped to [0, 1]."""
    noise = torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
    return (x + std * noise).clamp(0.0, 1.0)


@dataclass
class AugmentTask(ClassificationTask):
    """Label noise plus data augmentation, tested on clean and corrupted inputs.

    **Score: mean of ``acc_clean``, ``acc_noise`` (test inputs plus Gaussian noise of ``test_noise_std``)
    and ``acc_rotate`` (test images rotated by +-``test_rotation`` degrees, sign drawn per image).**
    ``augmentations`` are applied in order to every training batch: ``"cutout"`` (``cutout_size``),
    ``"cutmix"`` and ``"mixup"`` (Beta(``mix_alpha``, ``mix_alpha``); the loss then sees soft targets
    ``[N, C]``), ``"affine"`` (``max_rotation`` degrees, ``max_zoom``), ``"noise"`` (``noise_std``).
    Needs an image data set.
    """

    kind_name: ClassVar[str] = "augment"

    augmentations: tuple[str, ...] = ("affine", "noise", "cutout")
    cutout_size: int = 3
    mix_alpha: float = 1.0
    max_rotation: float = 20.0
    max_zoom: float = 0.1
    noise_std: float = 0.2
    test_noise_std: float = 0.4
    test_rotation: float = 30.0

    def __post_init__(self) -> None:
        super().__post_init__()
        names = self.augmentations
        ok = isinstance(names, (list, tuple)) and all(a in AUGMENTATIONS for a in names)
        require(ok and len(set(names)) == len(names),
                f"augmentations must be distinct names from {list(AUGMENTATIONS)}; got {names!r}")
        self.augmentations = tuple(names)
        # tabular data takes input noise and mixup; the others move pixels
        image_only = [a for a in names if a in IMAGE_AUGMENTATIONS]
        require(self.image_shape is not None or not image_only,
                f"augmentations {image_only} need an image dataset ({sorted(IMAGE_SHAPES)}) or image_shape; "
                f"got {self.dataset!r} (use 'noise' and 'mixup' for tabular data)")
        check_positive_int(self.cutout_size, "cutout_size")
        if self.image_shape is not None:
            side = min(self.image_layout()[1:])
            require(self.cutout_size <= side,
                    f"cutout_size must be at most the image side {side}; got {self.cutout_size}")
        check_range(self.mix_alpha, "mix_alpha", 1e-3, 100.0, high_open=False)
        check_range(self.max_rotation, "max_rotation", 0.0, 180.0, high_open=False)
        check_range(self.max_zoom, "max_zoom", 0.0, 0.9, high_open=False)
        check_range(self.noise_std, "noise_std", 0.0, 1.0, high_open=False)
        check_range(self.test_noise_std, "test_noise_std", 0.0, 1.0, high_open=False)
        check_range(self.test_rotation, "test_rotation", 0.0, 180.0, high_open=False)

    def prepare_batch(
        self, x: torch.Tensor, y: torch.Tensor, streams: Streams
    ) -> tuple[torch.Tensor, torch.Tensor]:
        gen = streams.augment
        target = one_hot(y, self.n_classes) if any(a in MIXING for a in self.augmentations) else y
        for name in self.augmentations:
            if name == "cutout":
                x = cutout(x, self.cutout_size, gen)
            elif name == "cutmix":
                x, target = cutmix(x, target, self.mix_alpha, gen)
            elif name == "mixup":
                x, target = mixup(x, target, self.mix_alpha, gen)
            elif name == "affine":
                x = random_affine(x, self.max_rotation, self.max_zoom, gen)
            else:
                x = gaussian_noise(x, self.noise_std, gen)
        return x, target

    def extra_metrics(self, model: Classifier, data: Split, streams: Streams) -> dict[str, torch.Tensor]:
        gen = streams.evaluation
        x = data.x_test
        noisy = gaussian_noise(x, self.test_noise_std, gen)
        with torch.no_grad():
            metrics = {"acc_noise": accuracy(model(noisy), data.y_test)}
        if self.image_shape is None:  # tabular data: no rotated test set
            return metrics
        sign = torch.randint(0, 2, (len(x),), generator=gen) * 2 - 1
        rotated = rotate_zoom(x, sign * self.test_rotation, torch.ones(len(x)))
        with torch.no_grad():
            metrics["acc_rotate"] = accuracy(model(rotated), data.y_test)
        return metrics

    def score(self, metrics: dict[str, float]) -> float:
        if "acc_rotate" not in metrics:
            return (metrics["acc_clean"] + metrics["acc_noise"]) / 2.0
        return (metrics["acc_clean"] + metrics["acc_noise"] + metrics["acc_rotate"]) / 3.0
