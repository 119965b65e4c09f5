"""The ``shapes`` data set: 16x16 grey images of ten geometric shapes, generated offline.

Held-out data for transfer checks. The other image data sets are digits (scikit-learn's 8x8, real MNIST),
and a loss chosen on digits could owe its edge to something digit-like; shapes are a different image family
whose class boundaries come from geometry, drawn by code here, so the data cost no download and are the same
on every machine. Each image is one shape (disc, ring, square, square outline, triangle, plus, cross,
horizontal bar, vertical bar, two dots) at a random centre, size, stroke width, rotation and brightness, drawn
4x supersampled and averaged down (smooth edges), on a background of random brightness with Gaussian pixel
noise, clipped to [0, 1]. Nothing here is tuned to any loss: the difficulty (jitter and noise) was set so that
cross-entropy on clean labels is clearly below 100 % test accuracy, leaving room for label noise to hurt.
"""

from __future__ import annotations

import numpy as np

#: The shapes, in class order.
CLASSES = ("disc", "ring", "square", "square_outline", "triangle", "plus", "cross", "hbar", "vbar", "two_dots")
SIDE = 16
#: Samples per class, and the generator's fixed seed (the data set is one fixed draw, like make_classification's).
PER_CLASS = 300
SEED = 20261202
_SUPER = 4  # supersampling factor of the drawing grid


def _inside(kind: int, u: np.ndarray, v: np.ndarray, size: np.ndarray, width: np.ndarray) -> np.ndarray:
    """Whether the points ``(u, v)`` (shape coordinates: centred, rotated; ``[N, P]``) lie in shape ``kind``."""
    s, w = size[:, None], width[:, None] / 2
    r = np.hypot(u, v)
    box = np.maximum(np.abs(u), np.abs(v))
    bar_h = (np.abs(v) <= w) & (np.abs(u) <= s)
    bar_v = (np.abs(u) <= w) & (np.abs(v) <= s)
    if kind == 0:
        return r <= s
    if kind == 1:
        return np.abs(r - s) <= w
    if kind == 2:
        return box <= s
    if kind == 3:
        return np.abs(box - s) <= w
    if kind == 4:  # pointing up: apex at (0, -s), base at v = s / 2
        return (v <= s / 2) & (v >= -s + np.sqrt(3.0) * np.abs(u))
    if kind == 5:
        return bar_h | bar_v
    if kind == 6:
        a, b = (u + v) / np.sqrt(2.0), (u - v) / np.sqrt(2.0)
        return ((np.abs(a) <= w) & (np.abs(b) <= s)) | ((np.abs(b) <= w) & (np.abs(a) <= s))
    if kind == 7:
        return bar_h
    if kind == 8:
        return bar_v
    dot = np.maximum(w, s / 3)
    return (np.hypot(u - s / 2, v) <= dot) | (np.hypot(u + s / 2, v) <= dot)


def generate(per_class: int = PER_CLASS, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """``(x float32 [N, 1, 16, 16] in [0, 1], y int64 [N])``, classes in blocks; the same for the same arguments."""
    rng = np.random.default_rng(seed)
    grid = (np.arange(SIDE * _SUPER) + 0.5) / _SUPER  # pixel coordinates of the fine grid's points
    gy, gx = np.meshgrid(grid, grid, indexing="ij")
    gx, gy = gx.ravel()[None, :], gy.ravel()[None, :]
    images, labels = [], []
    for kind in range(len(CLASSES)):
        n = per_class
        cx, cy = rng.uniform(6.5, 9.5, n), rng.uniform(6.5, 9.5, n)
        size = rng.uniform(3.5, 5.5, n)
        width = rng.uniform(1.0, 2.2, n)
        angle = np.deg2rad(rng.uniform(-15.0, 15.0, n))
        ink = rng.uniform(0.55, 1.0, n)
        background = rng.uniform(0.0, 0.3, n)
        dx, dy = gx - cx[:, None], gy - cy[:, None]
        c, s = np.cos(angle)[:, None], np.sin(angle)[:, None]
        u, v = c * dx + s * dy, -s * dx + c * dy
        fine = _inside(kind, u, v, size, width).astype(np.float64).reshape(n, SIDE, _SUPER, SIDE, _SUPER)
        cover = fine.mean(axis=(2, 4))
        image = background[:, None, None] + cover * (ink - background)[:, None, None]
        image = image + rng.normal(0.0, 0.1, image.shape)
        images.append(np.clip(image, 0.0, 1.0)[:, None])
        labels.append(np.full(n, kind))
    return np.concatenate(images).astype(np.float32), np.concatenate(labels).astype(np.int64)
