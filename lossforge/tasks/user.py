"""Tasks on the user's own data: the built-in classification task and its procedures, fed from a file.

``dataset`` is the path of a data file (CSV, Parquet, NPZ, NPY; see :mod:`lossforge.data_sources`); ``target``
names the label column, ``features`` the input columns (default: all others). Labels are noisy in one of two
ways, and the task refuses to guess which:

* **injected** (``noise`` = ``symmetric`` | ``asymmetric`` with ``flips`` | ``pair`` at ``noise_rate``): the
  file's labels are taken as clean; a seeded stratified ``test_fraction`` is held out (or ``test_data``, a second
  file, is the test set), training labels are corrupted, and every loss is scored on the clean test labels;
* **already noisy** (``trusted``): a column (or array) flagging rows whose labels are known to be right, or a
  second file of clean rows. Training uses the other rows as they are; every loss is scored on the trusted rows.
  :meth:`UserClassificationTask.noise_estimate` then estimates the noise's transition matrix from them.

``classes`` (label names in index order) and ``data_hash`` are filled in on construction and stored with the
settings, so a run reopened in another process maps labels alike and refuses a data file that has changed.
``image_shape`` reads each row as an image, so the CNN and the image augmentations apply: ``[H, W]`` is one
channel of H*W values, ``[C, H, W]`` is C channels (at most :data:`MAX_CHANNELS`) laid out channel-major, i.e. the
row holds all H*W values of channel 0 (row by row), then those of channel 1, ... (numpy's ``x.reshape(N, C, H, W)``
order; an ``[N, H, W, C]`` array is ``x.transpose(0, 3, 1, 2).reshape(N, -1)``).

Inputs are scaled to [0, 1] with the range of the rows the models train on (per feature; per channel for
images, so a picture keeps its relative intensities), fitted per seed after the split: a test row's values
never shape the training inputs. Test values outside that range are clipped.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator, Sequence

import numpy as np
import torch

from lossforge import data_sources
from lossforge.errors import ConfigError
from lossforge.tasks.adversarial import AdversarialTask
from lossforge.tasks.augment import AugmentTask
from lossforge.tasks.base import LossLike, Task, TaskResult, check_int_list, check_range, require
from lossforge.tasks.classification import (
    Classifier,
    ClassificationTask,
    channel_last_hint,
    channel_major_advice,
    check_symmetric_rate,
)
from lossforge.tasks.data import Split, add_label_noise, generator, stratified_split
from lossforge.tasks.regularize import RegularizeTask
from lossforge.tasks.torchfunc import StackedModule, build_one, is_factory_path


_STORED_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar("lossforge_stored_only", default=False)


@contextlib.contextmanager
def stored_settings_only() -> Iterator[None]:
    """Within it, own-data tasks rebuilt from settings that hold their classes and data hash (a run's stored
    suite) do not read their data files: a run's result views (``show``, ``runs``, ``open_run``) need only the
    stored scores, and the run stays readable after its data file moved or changed. Such tasks are for viewing,
    not training (the engine rebuilds a resumed run's suite outside it, so the data is checked there)."""
    token = _STORED_ONLY.set(True)
    try:
        yield
    finally:
        _STORED_ONLY.reset(token)


#: Most channels an ``image_shape`` may give (a larger first number is most likely a channel-last shape).
MAX_CHANNELS = 16


def check_image_shape(value: Any) -> tuple[int, ...]:
    """``[H, W]`` or ``[C, H, W]`` of positive integers, C at most :data:`MAX_CHANNELS`; returned as a tuple."""
    ok = isinstance(value, (list, tuple)) and len(value) in (2, 3)
    ok = ok and all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 100_000 for v in value)
    require(ok, f"image_shape must be [height, width] or [channels, height, width] of positive integers "
                f"(CLI --image-shape 28,28 or 3x32x32); got {value!r}")
    if len(value) == 3 and value[0] > MAX_CHANNELS:
        hint = f"; for channel-last rows {channel_major_advice(value)}" if value[2] <= MAX_CHANNELS else ""
        require(False, f"image_shape {list(value)} has {value[0]} channels, more than {MAX_CHANNELS}: it is "
                       f"[channels, height, width] with the channels first{hint}")
    return tuple(value)


def fit_range(x: np.ndarray, channels: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(low, span)`` per feature of training rows ``x [N, D]`` (one range per channel when ``channels`` is
    given: the row is channel-major) for :func:`scale_rows`; a constant feature gets span 1."""
    if channels is None:
        low, high = x.min(axis=0), x.max(axis=0)
    else:
        per = x.reshape(len(x), channels, -1)
        size = per.shape[2]
        low, high = np.repeat(per.min(axis=(0, 2)), size), np.repeat(per.max(axis=(0, 2)), size)
    return low, np.where(high > low, high - low, 1.0)


def scale_rows(x: np.ndarray, scaling: tuple[np.ndarray, np.ndarray]) -> torch.Tensor:
    """Rows mapped to [0, 1] by a :func:`fit_range` scaling (values outside the fitted range clipped)."""
    low, span = scaling
    return torch.tensor(np.clip((x - low) / span, 0.0, 1.0), dtype=torch.float32)


@dataclass(frozen=True)
class Prepared:
    """The user's rows: raw features ``[N, D]`` (float64, scaled per seed in :meth:`UserData.data`), class
    indices, trusted flags; ``test`` is the separate test/trusted file's rows when there is one."""

    x: np.ndarray
    y: torch.Tensor
    trusted: torch.Tensor | None
    test: tuple[np.ndarray, torch.Tensor] | None


@dataclass
class UserData:
    """Settings and data handling shared by the own-data tasks (a mixin placed before the task class)."""

    user_models: ClassVar[bool] = True

    dataset: str = ""
    target: str = "y"
    features: tuple[str, ...] = ()
    trusted: str | None = None
    test_data: str | None = None
    classes: tuple[str, ...] = ()
    flips: tuple[tuple[str, str], ...] = ()
    image_shape: tuple[int, ...] | None = None
    data_hash: str = ""

    def notices(self) -> list[str]:
        hint = channel_last_hint(self.image_shape)
        if not hint:
            return []
        c, h, w = self.image_shape
        return [f"image_shape {list(self.image_shape)} reads each row as {c} channels of {h}x{w} pixels{hint}"]

    def check_data(self) -> None:
        require(isinstance(self.dataset, str) and self.dataset != "",
                "dataset must be the path of a data file (.csv, .parquet, .npz, .npy)")
        self.dataset = str(Path(self.dataset).expanduser().resolve())
        for name in ("trusted", "test_data"):
            value = getattr(self, name)
            require(value is None or (isinstance(value, str) and value != ""), f"{name} must be a name or a path")
        if self.trusted is not None and data_sources.is_data_path(self.trusted):
            self.trusted = str(Path(self.trusted).expanduser().resolve())
        if self.test_data is not None:
            self.test_data = str(Path(self.test_data).expanduser().resolve())
        require(isinstance(self.features, (list, tuple)) and all(isinstance(f, str) for f in self.features),
                f"features must be a list of column names; got {self.features!r}")
        self.features = tuple(self.features)
        if self.image_shape is not None:
            self.image_shape = check_image_shape(self.image_shape)
        if _STORED_ONLY.get() and self.data_hash and self.classes:  # a run's stored task, for its results
            self.classes = tuple(str(c) for c in self.classes)
            self.flips = tuple((str(s), str(d)) for s, d in self.flips)
            return
        # settings are checked before the files are read, so a bad setting is named, not a file error
        digest = self._hash_files()
        require(not self.data_hash or self.data_hash == digest,
                f"{self.dataset}: the data changed since this task was set up (hash {digest}, stored "
                f"{self.data_hash}); restore the file or start a new run")
        self.data_hash = digest
        self._check_noise_mode()
        main, other = self._tables()
        self.features = main.features  # inferred ones are stored, so the run says what was used
        if other is not None:  # classes were the union: test rows of a class no model was trained on were scored
            seen = set(data_sources.infer_classes(main.y))
            unseen = [c for c in data_sources.infer_classes(other.y) if c not in seen]
            require(not unseen, f"{self._other_file()}: label(s) {unseen[:5]} of {self.target!r} never occur in the "
                                f"training data {self.dataset}; a model cannot predict a class it never saw "
                                "labelled, so scoring on them means nothing; drop those rows or add labelled rows "
                                "of them to the training data")
        if not self.classes:
            labels = [main.y] + ([other.y] if other is not None else [])
            self.classes = data_sources.infer_classes(np.concatenate([np.asarray(v, dtype=object) for v in labels]))
        # a repeated name left an index no label had; a string was read as its characters
        require(isinstance(self.classes, (list, tuple)) and len(set(map(str, self.classes))) == len(self.classes),
                f"classes must be a list of distinct class names in index order; got {self.classes!r}")
        self.classes = tuple(str(c) for c in self.classes)
        require(len(self.classes) >= 2,
                f"{self.dataset}: the target {self.target!r} has a single class {list(self.classes)}; "
                "a classifier needs at least two")
        if self.noise == "symmetric":
            check_symmetric_rate(self.noise_rate, len(self.classes))
        require(isinstance(self.flips, (list, tuple))
                and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in self.flips),
                f"flips must be [[source, destination], ...] class names; got {self.flips!r}")
        self.flips = tuple((str(s), str(d)) for s, d in self.flips)
        unknown = sorted({c for pair in self.flips for c in pair} - set(self.classes))
        require(not unknown, f"flips name unknown class(es) {unknown}; classes are {list(self.classes)}")
        targets: dict[str, set[str]] = {}
        for source, dest in self.flips:
            targets.setdefault(source, set()).add(dest)
        twice = sorted(s for s, dests in targets.items() if len(dests) > 1)  # only the last one was kept
        require(not twice, f"flips class {twice[0]!r} to {sorted(targets[twice[0]])}; give each source class one "
                           "destination" if twice else "")
        same = [s for s, d in self.flips if s == d]  # changes no label: the run trained noise-free
        require(not same, f"flips class {same[0]!r} to itself; name another class" if same else "")
        require(self.noise != "asymmetric" or bool(self.flips),
                "asymmetric noise on your data needs flips = [[source, destination], ...] class names "
                "(CLI: --noise asymmetric:0.3:cat>dog,dog>cat)")
        prepared = self.prepared()  # reads and checks every row once
        if self.trusted is None and prepared.test is None:  # the split holds out rows of classes with two or more
            counts = torch.bincount(prepared.y, minlength=self.n_classes)
            require(bool((counts >= 2).any()),
                    f"{self.dataset}: every class of {self.target!r} has a single row, so no row is held out to "
                    "score on (every loss scored 0); give several rows a class or a test file (--test-data)")
        if self.image_shape is not None:
            c, h, w = self.image_layout()  # type: ignore[attr-defined]
            n = main.x.shape[1]
            hint = (f" (with {n // (h * w)} channels: image_shape [{n // (h * w)}, {h}, {w}])"
                    if n % (h * w) == 0 and n != c * h * w else "")
            require(n == c * h * w,
                    f"image_shape {list(self.image_shape)} needs {c}x{h}x{w} = {c * h * w} features a row; the "
                    f"data has {n}{hint}: give [height, width] or [channels, height, width] matching the rows")
        if is_factory_path(self.model):  # a factory that raises or returns no module fails here, in one line
            build_one(self.model, int(prepared.x.shape[1]), self.n_classes, 0)
        if prepared.trusted is not None:
            n = int(prepared.trusted.sum())
            require(n > 0, f"{self.dataset}: the trusted column {self.trusted!r} marks no rows; mark clean rows 1/true")
            require(n < len(prepared.y), f"{self.dataset}: every row is trusted; nothing noisy is left to train on")
        if prepared.trusted is not None or prepared.test is not None:  # a held-out split keeps every class
            # every model would learn one answer (and the noise estimate's classifier failed in a traceback)
            only = torch.unique(prepared.y if prepared.trusted is None else prepared.y[~prepared.trusted])
            require(len(only) > 1, f"{self.dataset}: the rows trained on all have class "
                                   f"{self.classes[int(only[0])]!r}; a classifier needs rows of two classes or more")

    def _check_noise_mode(self) -> None:
        # a rate of nan or -0.1 counted as "no noise" and got "say how the labels are noisy": name the rate
        check_range(self.noise_rate, "noise_rate", 0.0, 0.9)
        noisy = self.noise != "none" and self.noise_rate > 0
        require(noisy or self.trusted is not None,
                "say how the labels are noisy: inject noise (noise = 'symmetric' with noise_rate; CLI --noise "
                "symmetric:0.4) or name a trusted clean subset (trusted = COLUMN or FILE; CLI --trusted)")
        require(not (noisy and self.trusted is not None),
                "choose one: injected noise (noise) for clean labels, or a trusted subset (trusted) for noisy ones")
        require(self.test_data is None or self.trusted is None,
                "with a trusted subset the losses are scored on it; drop test_data")

    def _other_file(self) -> str | None:
        if self.trusted is not None and data_sources.is_data_path(self.trusted):
            return self.trusted
        return self.test_data

    def _hash_files(self) -> str:
        return data_sources.files_digest([self.dataset] + ([self._other_file()] if self._other_file() else []))

    def _tables(self) -> tuple[data_sources.Table, data_sources.Table | None]:
        flag = self.trusted if self.trusted is not None and not data_sources.is_data_path(self.trusted) else None
        main = data_sources.cached_table(self.dataset, data_sources.file_hash(self.dataset), self.target,
                                         self.features, flag)
        other_path = self._other_file()
        other = None
        if other_path is not None:
            other = data_sources.cached_table(other_path, data_sources.file_hash(other_path), self.target,
                                              main.features, None)
        return main, other

    def prepared(self) -> Prepared:
        """Every row, unscaled, with encoded labels (cached per settings)."""
        key = (self.dataset, self.data_hash, self.target, self.features, self.trusted, self.test_data, self.classes,
               self.image_shape)
        hit = _PREPARED.get(key)
        if hit is not None:
            return hit
        main, other = self._tables()
        y = torch.tensor(data_sources.encode_labels(main.y, self.classes, self.dataset))
        trusted = torch.tensor(main.trusted) if main.trusted is not None else None
        test = None
        if other is not None:
            labels = data_sources.encode_labels(other.y, self.classes, str(self._other_file()))
            test = (np.asarray(other.x, dtype=np.float64), torch.tensor(labels))
        prepared = Prepared(np.asarray(main.x, dtype=np.float64), y, trusted, test)
        _PREPARED[key] = prepared
        return prepared

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def build_model(self, n_models: int, n_features: int, n_classes: int, init: torch.Generator) -> Classifier:
        """The built-in MLP/CNN, or K stacked copies of the user's module (:mod:`lossforge.tasks.torchfunc`)."""
        if not is_factory_path(self.model):
            return super().build_model(n_models, n_features, n_classes, init)  # type: ignore[misc]
        seed = int(torch.randint(0, 2**62, (1,), generator=init))
        module = build_one(self.model, n_features, n_classes, seed)
        sample_dims = 1 if self.image_shape is None else 3
        return Classifier(StackedModule(module, n_models, sample_dims, self.model), flatten_images=False)

    def evaluate(self, losses: Sequence[LossLike], seed: int, device: str = "cpu") -> list[TaskResult]:
        if not is_factory_path(self.model):
            return super().evaluate(losses, seed, device)  # type: ignore[misc]
        # a user module's random layers draw from torch's global generator: seed it for this evaluation only
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator(seed, "dropout"))))
            return super().evaluate(losses, seed, device)  # type: ignore[misc]

    def flip_indices(self) -> dict[int, int]:
        index = {name: i for i, name in enumerate(self.classes)}
        return {index[s]: index[d] for s, d in self.flips}

    def split_rows(self, seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(train, test)``: indices of the main file's rows that seed ``seed`` trains on (in training order)
        and tests on; ``test`` is None when the test set is a second file (``test_data`` or a trusted file)."""
        rows = self.prepared()
        test = None
        if self.trusted is not None:
            if rows.test is not None:
                train = torch.arange(len(rows.y))
            else:
                train, test = torch.nonzero(~rows.trusted).squeeze(1), torch.nonzero(rows.trusted).squeeze(1)
            if self.n_train is not None:
                train = train[torch.randperm(len(train), generator=generator(seed, "split"))[: self.n_train]]
            return train, test
        if rows.test is not None:
            train = torch.randperm(len(rows.y), generator=generator(seed, "split"))
        else:
            train, test = stratified_split(rows.y, self.test_fraction, generator(seed, "split"))
            train = train[torch.randperm(len(train), generator=generator(seed, "subset"))]
        return (train if self.n_train is None else train[: self.n_train]), test

    def data(self, seed: int) -> Split:
        """The seed's split (:meth:`split_rows`): trusted rows (or file) as the clean test set, or a seeded
        stratified hold-out (or ``test_data``) with injected noise on the training labels. Inputs are scaled
        with the range of this seed's training rows only (:func:`fit_range`), so no test value leaks into
        training; with a separate test file that is the main file's rows."""
        rows = self.prepared()
        train, test = self.split_rows(seed)
        x_test, y_test = rows.test if test is None else (rows.x[test.numpy()], rows.y[test])  # type: ignore[misc]
        y_train = rows.y[train]
        if self.trusted is None:
            y_train = add_label_noise(y_train, self.n_classes, self.noise, self.noise_rate, generator(seed, "noise"),
                                      self.flip_indices() if self.noise == "asymmetric" else None)
        x_train = rows.x[train.numpy()]
        layout = self.image_layout()  # type: ignore[attr-defined]
        scaling = fit_range(x_train, None if layout is None else layout[0])
        return Split(self._shaped(scale_rows(x_train, scaling)), y_train, self._shaped(scale_rows(x_test, scaling)),
                     y_test, self.n_classes)

    def _shaped(self, x: torch.Tensor) -> torch.Tensor:
        layout = self.image_layout()  # type: ignore[attr-defined]
        return x if layout is None else x.reshape(len(x), *layout)

    def noise_estimate(self, seed: int = 0) -> np.ndarray:
        """The label-noise transition matrix ``T[i, j] = P(noisy label j | true class i)`` estimated from the
        trusted rows (Hendrycks et al., 2018, "gold loss correction"): a classifier fit to the noisy rows
        predicts noisy-label probabilities, averaged over the trusted rows of each true class."""
        require(self.trusted is not None, "the noise can be estimated only with a trusted subset (trusted = ...)")
        split = self.data(seed)
        return estimate_transition(split.x_train.flatten(1).numpy(), split.y_train.numpy(),
                                   split.x_test.flatten(1).numpy(), split.y_test.numpy(), self.n_classes)


_PREPARED: dict[tuple, Prepared] = {}


def estimate_transition(x_noisy: np.ndarray, y_noisy: np.ndarray, x_clean: np.ndarray, y_clean: np.ndarray,
                        n_classes: int) -> np.ndarray:
    """``T[i, j]``: mean predicted probability of noisy label ``j`` over clean rows of class ``i`` (a row of a
    class with no clean rows is uniform). The classifier is a multinomial logistic regression."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(max_iter=500)
    model.fit(x_noisy, y_noisy)
    probs = np.zeros((len(x_clean), n_classes))
    probs[:, model.classes_] = model.predict_proba(x_clean)
    matrix = np.full((n_classes, n_classes), 1.0 / n_classes)
    for c in range(n_classes):
        if (y_clean == c).any():
            matrix[c] = probs[y_clean == c].mean(axis=0)
    return matrix


def format_transition(matrix: np.ndarray, classes: tuple[str, ...]) -> str:
    """The matrix as a small text table, rows = true class, columns = noisy label."""
    width = max(6, *(len(c) for c in classes))
    head = " " * width + " " + " ".join(f"{c:>{width}}" for c in classes)
    rows = [f"{c:>{width}} " + " ".join(f"{v:>{width}.2f}" for v in row) for c, row in zip(classes, matrix)]
    return "\n".join([head, *rows])


@dataclass
class UserClassificationTask(UserData, ClassificationTask):
    """Label noise on the user's data (type ``user``); scored on clean test labels (``acc_clean``)."""

    kind_name: ClassVar[str] = "user"
    noise: str = "none"


@dataclass
class UserAugmentTask(UserData, AugmentTask):
    """Augmentation on the user's data (type ``user_augment``): input noise and mixup for tabular data, the
    image augmentations with ``image_shape``."""

    kind_name: ClassVar[str] = "user_augment"
    noise: str = "none"
    augmentations: tuple[str, ...] = ("noise", "mixup")


@dataclass
class UserAdversarialTask(UserData, AdversarialTask):
    """Adversarial training on the user's data (type ``user_adversarial``)."""

    kind_name: ClassVar[str] = "user_adversarial"
    noise: str = "none"


@dataclass
class UserRegularizeTask(UserData, RegularizeTask):
    """Regularisation on the user's data (type ``user_regularize``): dropout, label smoothing, entropy."""

    kind_name: ClassVar[str] = "user_regularize"
    noise: str = "none"


#: Procedure name (CLI ``--procedures``) -> own-data task type.
PROCEDURES: dict[str, str] = {"plain": "user", "augment": "user_augment", "adversarial": "user_adversarial",
                              "regularize": "user_regularize"}


def user_task(procedure: str, **settings: Any) -> ClassificationTask:
    """The own-data task of ``procedure`` (see :data:`PROCEDURES`) with ``settings``."""
    from lossforge.tasks.registry import make_task

    if procedure not in PROCEDURES:
        raise ConfigError(f"procedure must be one of {', '.join(PROCEDURES)}; got {procedure!r}")
    return make_task(PROCEDURES[procedure], **settings)  # type: ignore[return-value]


# --- regression on the user's data ---------------------------------------------------------------------------

#: Injected target noise of the own-data regression task.
REGRESSION_NOISE = ("none", "gaussian", "outliers")


@dataclass
class UserRegressionTask(Task):
    """Regression on the user's data (type ``user_regression``), scored like the bundled ``regression`` task:
    **score = minus the clean-test RMSE averaged over a noisy and a purified run** (standardised target units;
    metrics ``rmse_noisy``, ``rmse_purified``, the noise model ``noise_mean_est_targets``/``noise_std_est_targets``,
    ``purified`` = whether the purified run differed and was trained, ``purify`` = the setting).

    Noise, as for classification, in one of two ways: injected into the training targets (``noise`` =
    ``gaussian``: ``noise_mean + noise_std * N(0, 1)``, or ``outliers``: that noise plus, on ``outlier_fraction``
    of the rows, a one-sided offset uniform in [scale/2, 3 scale/2], all in target standard deviations), or
    already present with ``trusted`` clean rows (a column or a file) that score every loss.

    **Purification** (the bundled task's, :class:`~lossforge.tasks.regression.NoiseEstimate`): the target noise's
    median and MAD are estimated from residuals ``noisy - clean`` (:meth:`noise_model`); with ``trusted`` rows the
    clean targets of the noisy rows are predicted by a ridge regression fit to the trusted rows, with injected
    noise the first ``n_calibration`` training rows (random per seed) have known clean targets. The median is
    subtracted from the training targets when it is more than ``purify_z`` standard errors from zero; no row is
    dropped or down-weighted (the outliers are the loss's job). Each loss then trains twice from the same weights,
    on the noisy and on the purified targets, as 2K models of one batch (K when nothing was subtracted, and both
    RMSEs are then the same number). ``purify`` defaults to whether a noise model exists (trusted rows, or injected
    noise with ``n_calibration > 0``); off, the score is minus the noisy run's RMSE.

    Targets are standardised with the main file's mean and deviation; features are scaled to [0, 1]. The model
    is ``model = "mlp"`` (K batched tanh MLPs of widths ``hidden``) or a factory ``"package.module:factory"``
    called as ``factory(n_features=D, n_classes=1)`` (the classification factory contract, one output) whose
    module maps ``[N, D]`` to ``[N, 1]``; its K copies train at once with ``torch.func``
    (:mod:`lossforge.tasks.torchfunc`). Training is full-batch Adam at ``lr`` for ``steps`` steps.
    """

    kind_name: ClassVar[str] = "user_regression"
    problem: ClassVar[str] = "regression"
    reference: ClassVar[str] = "mse"

    dataset: str = ""
    target: str = "y"
    features: tuple[str, ...] = ()
    trusted: str | None = None
    test_data: str | None = None
    test_fraction: float = 0.3
    noise: str = "none"
    noise_std: float = 0.5
    noise_mean: float = 0.0
    outlier_fraction: float = 0.1
    outlier_scale: float = 5.0
    model: str = "mlp"
    hidden: tuple[int, ...] = (32,)
    steps: int = 300
    lr: float = 0.01
    purify: bool | None = None
    n_calibration: int = 32
    purify_z: float = 3.0
    data_hash: str = ""

    @property
    def scale_free(self) -> bool:
        return True  # full-batch Adam, nothing added to the loss (see Task.scale_free)

    def __post_init__(self) -> None:
        from lossforge.tasks.base import check_choice, check_int, check_positive_int, check_range

        require(isinstance(self.dataset, str) and self.dataset != "",
                "dataset must be the path of a data file (.csv, .parquet, .npz, .npy)")
        self.dataset = str(Path(self.dataset).expanduser().resolve())
        if self.trusted is not None and data_sources.is_data_path(self.trusted):
            self.trusted = str(Path(self.trusted).expanduser().resolve())
        if self.test_data is not None:
            self.test_data = str(Path(self.test_data).expanduser().resolve())
        self.features = tuple(self.features)
        check_choice(self.noise, "noise", REGRESSION_NOISE)
        check_range(self.test_fraction, "test_fraction", 0.05, 0.95, high_open=False)
        check_range(self.noise_std, "noise_std", 0.0, 10.0, high_open=False)
        check_range(self.noise_mean, "noise_mean", -10.0, 10.0, high_open=False)
        check_range(self.outlier_fraction, "outlier_fraction", 0.0, 0.5)
        check_range(self.outlier_scale, "outlier_scale", 0.0, 100.0, high_open=False)
        self.hidden = check_int_list(self.hidden, "hidden", allow_empty=True)
        check_positive_int(self.steps, "steps")
        check_range(self.lr, "lr", 1e-8, 10.0)
        require(self.model == "mlp" or is_factory_path(self.model),
                f"model must be 'mlp' or a factory 'package.module:factory' for regression; got {self.model!r}")
        check_int(self.n_calibration, "n_calibration", 0)
        require(self.n_calibration == 0 or self.n_calibration >= 3,
                f"n_calibration must be 0 (none) or at least 3 rows; got {self.n_calibration}")
        check_range(self.purify_z, "purify_z", 0.0, 100.0, high_open=False)
        require(self.noise != "none" or self.trusted is not None,
                "say how the targets are noisy: inject noise (noise = 'gaussian' or 'outliers'; CLI --noise "
                "gaussian:0.5) or name a trusted clean subset (trusted = COLUMN or FILE; CLI --trusted)")
        require(self.noise == "none" or self.trusted is None,
                "choose one: injected noise (noise) for clean targets, or a trusted subset (trusted) for noisy ones")
        if _STORED_ONLY.get() and self.data_hash and isinstance(self.purify, bool):  # a run's stored task
            return
        digest = data_sources.files_digest([self.dataset] + ([self._other()] if self._other() else []))
        require(not self.data_hash or self.data_hash == digest,
                f"{self.dataset}: the data changed since this task was set up (hash {digest}, stored "
                f"{self.data_hash}); restore the file or start a new run")
        self.data_hash = digest
        x, y, trusted, _ = self._rows()
        if trusted is not None:
            require(bool(trusted.any()), f"{self.dataset}: the trusted column {self.trusted!r} marks no rows; "
                    "mark clean rows 1/true")
            require(not bool(trusted.all()), f"{self.dataset}: every row is trusted; nothing noisy is left to train on")
        # purify defaults to whether a noise model exists; stored resolved, so the run says whether it was on
        can_purify = self.trusted is not None or (self.noise != "none" and self.n_calibration > 0)
        self.purify = can_purify if self.purify is None else self.purify
        require(isinstance(self.purify, bool), f"purify must be true or false; got {self.purify!r}")
        require(not self.purify or can_purify,
                "purify needs a noise model: trusted rows (trusted = COLUMN or FILE) or, with injected noise, "
                "n_calibration > 0 rows of known clean targets")
        if is_factory_path(self.model):  # a factory that raises, returns no module or a wrong shape: one line
            check_regression_module(self.model, scale_rows(x[:2], fit_range(x)))

    def _other(self) -> str | None:
        if self.trusted is not None and data_sources.is_data_path(self.trusted):
            return self.trusted
        return self.test_data

    def _rows(self) -> tuple[np.ndarray, np.ndarray, torch.Tensor | None, tuple[np.ndarray, np.ndarray] | None]:
        """The main file's raw features and targets, trusted flags, and the second file's raw rows if any."""
        flag = self.trusted if self.trusted is not None and not data_sources.is_data_path(self.trusted) else None
        main = data_sources.cached_table(self.dataset, data_sources.file_hash(self.dataset), self.target,
                                         self.features, flag)
        self.features = main.features

        def numeric(values: np.ndarray, where: str) -> np.ndarray:
            try:
                return np.asarray(values, dtype=np.float64)
            except (TypeError, ValueError):
                raise ConfigError(f"{where}: the target {self.target!r} is not numeric; a regression needs "
                                  "numbers (use problem = classification for labels)") from None

        y = numeric(main.y, self.dataset)
        require(bool(np.isfinite(y).all()),
                f"{self.dataset}: target {self.target!r} has missing or non-finite values; drop those rows")
        # targets are standardised by their deviation: one that overflows (|y| ~ 1e300) or is 0 (a constant
        # target) turned every target into 0, and the search ran on that instead of the data
        with np.errstate(over="ignore", invalid="ignore"):
            spread = float(np.std(y))
        require(np.isfinite(spread), f"{self.dataset}: target {self.target!r} has values too large to standardise "
                f"(up to {float(np.abs(y).max()):.3g}); rescale it")
        require(spread > 0, f"{self.dataset}: target {self.target!r} is {float(y[0]):g} in every row; a regression "
                "needs targets that vary")
        other = None
        if self._other() is not None:
            table = data_sources.cached_table(self._other(), data_sources.file_hash(self._other()), self.target,
                                              main.features, None)
            other = (np.asarray(table.x, dtype=np.float64), numeric(table.y, self._other()))
            require(bool(np.isfinite(other[1]).all()),
                    f"{self._other()}: target {self.target!r} has missing or non-finite values; drop those rows")
        trusted = torch.tensor(main.trusted) if main.trusted is not None else None
        return np.asarray(main.x, dtype=np.float64), y, trusted, other

    def split_rows(self, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
        """``(train, test)``: indices of the main file's rows seed ``seed`` trains on (in training order) and
        tests on; ``test`` is None when the test set is a second file (``test_data`` or a trusted file)."""
        _, y, trusted, other = self._rows()
        return self._split_indices(seed, y, trusted, other)

    def _split_indices(self, seed: int, y: np.ndarray, trusted: torch.Tensor | None,
                       other: tuple[np.ndarray, np.ndarray] | None) -> tuple[np.ndarray, np.ndarray | None]:
        if self.trusted is not None:
            if other is not None:
                return np.arange(len(y)), None
            mask = trusted.numpy()
            return np.nonzero(~mask)[0], np.nonzero(mask)[0]
        order = torch.randperm(len(y), generator=generator(seed, "split")).numpy()
        if other is not None:
            return order, None
        n_test = int(round(self.test_fraction * len(y)))
        return order[n_test:], order[:n_test]

    def _split(self, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """``(x_train, y_train noisy, y_train clean or None, x_test, y_test clean)`` of one seed; the clean
        training targets are known with injected noise only. Features are scaled to [0, 1] and targets
        standardised with the training rows' range, mean and deviation (the targets as given, before any
        injected noise), so no test row shapes the training data."""
        x, y, trusted, other = self._rows()
        train, test = self._split_indices(seed, y, trusted, other)  # the rows read once
        x_test, y_test = other if test is None else (x[test], y[test])  # type: ignore[misc]
        scaling = fit_range(x[train])
        mean, std = float(y[train].mean()), float(y[train].std()) or 1.0

        def targets(values: np.ndarray) -> torch.Tensor:
            return torch.tensor((values - mean) / std, dtype=torch.float32)

        x_train, x_test = scale_rows(x[train], scaling), scale_rows(x_test, scaling)
        y_given, y_test = targets(y[train]), targets(y_test)
        if self.trusted is not None:
            return x_train, y_given, None, x_test, y_test
        noise_gen = generator(seed, "noise")
        y_train = y_given + self.noise_mean + self.noise_std * torch.randn(len(train), generator=noise_gen)
        if self.noise == "outliers":
            n_out = int(round(self.outlier_fraction * len(train)))
            chosen = torch.randperm(len(train), generator=noise_gen)[:n_out]
            offset = self.outlier_scale * (0.5 + torch.rand(n_out, generator=noise_gen))
            y_train[chosen] += offset
        return x_train, y_train, y_given, x_test, y_test

    def data(self, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x_train, y_train noisy, x_test, y_test clean)`` of one seed."""
        x_train, y_train, _, x_test, y_test = self._split(seed)
        return x_train, y_train, x_test, y_test

    def _residuals(self, seed: int) -> np.ndarray | None:
        """Target residuals ``noisy - clean`` that calibrate the noise model, or None without a source: with
        trusted rows, the noisy rows' targets minus a ridge regression fit to the trusted rows, less the median
        of the trusted rows' own residuals (a ridge fit to a curved function errs by a median of its own, which
        is no noise); the deviation still contains the fit's error. With injected noise, the first
        ``n_calibration`` training rows' known noise."""
        x_train, y_train, y_clean, x_test, y_test = self._split(seed)
        if self.trusted is not None:
            from sklearn.linear_model import RidgeCV

            clean = RidgeCV().fit(x_test.numpy(), y_test.numpy())
            misfit = float(np.median(y_test.numpy() - clean.predict(x_test.numpy())))
            return y_train.numpy().astype(np.float64) - clean.predict(x_train.numpy()) - misfit
        if self.noise != "none" and self.n_calibration > 0 and y_clean is not None:
            n = min(self.n_calibration, len(y_train))
            return (y_train[:n].double() - y_clean[:n].double()).numpy()
        return None

    def noise_model(self, seed: int = 0) -> NoiseEstimate | None:
        """The bundled regression task's noise model (:class:`~lossforge.tasks.regression.NoiseEstimate`:
        median, MAD, the shift purification subtracts) of the targets, or None without trusted or calibration
        rows. The inputs carry no modelled noise."""
        from lossforge.tasks.regression import NoiseEstimate

        residuals = self._residuals(seed)
        if residuals is None:
            return None
        return NoiseEstimate.from_residuals(np.zeros(len(residuals)), residuals, self.purify_z)

    def noise_estimate(self, seed: int = 0) -> dict[str, float]:
        """The target noise model as a report (standardised units): ``bias`` (the residuals' median), ``std``
        (MAD-based), ``shift`` (what purification subtracts: the bias when significant, else 0) and the fraction
        of residuals beyond 3 deviations (``outlier_fraction``)."""
        residuals = self._residuals(seed)
        require(residuals is not None, "the noise can be estimated only with a trusted subset (trusted = ...) or "
                "injected noise with n_calibration > 0")
        model = self.noise_model(seed)
        assert model is not None
        outliers = float(np.mean(np.abs(residuals - model.target_mean) > 3 * max(model.target_std, 1e-12)))
        return {"bias": model.target_mean, "std": model.target_std, "outlier_fraction": outliers,
                "shift": model.target_shift}

    def build_model(self, n_models: int, n_features: int, seed: int) -> torch.nn.Module:
        """K copies of one initial model (the seed's weights, shared: common random numbers): the built-in MLP
        or the user's module stacked for ``torch.func``; outputs ``[K, N, 1]``."""
        from lossforge.models import BatchedMLP

        init = generator(seed, "init")
        if not is_factory_path(self.model):
            return BatchedMLP(n_models, [n_features, *self.hidden, 1], init, activation="tanh")
        module = build_one(self.model, n_features, 1, int(torch.randint(0, 2**62, (1,), generator=init)))
        return StackedModule(module, n_models, 1, self.model)

    def evaluate(self, losses: Sequence[LossLike], seed: int, device: str = "cpu") -> list[TaskResult]:
        from lossforge.tasks.regression import paired_results
        from lossforge.training import BatchedTrainer, predict, rmse

        if not losses:
            return []
        x_train, y_train, _, x_test, y_test = self._split(seed)
        estimate = self.noise_model(seed) if self.purify else None
        y_purified = y_train - estimate.target_shift if estimate is not None else y_train
        # Models runs*i (noisy) and runs*i+1 (purified) train with loss i from the same initial weights, as in
        # the bundled task; a purified run that would repeat the noisy one is not trained.
        runs = 1 if torch.equal(y_train, y_purified) else 2
        k = len(losses)
        targets = torch.stack([y_train, y_purified][:runs]).repeat(k, 1).to(device)
        x_train, x_test, y_test = x_train.to(device), x_test.to(device), y_test.to(device)
        # a user module's random layers draw from torch's global generator: seed it for this evaluation only
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator(seed, "dropout"))))
            model = self.build_model(k * runs, x_train.shape[1], seed).to(device)
            trainer = BatchedTrainer.create(model, [loss for loss in losses for _ in range(runs)], lr=self.lr)
            fitted = trainer.fit(x_train, targets, self.steps, lambda step: self.lr)
            model.eval()
            errors = rmse(predict(model, x_test), y_test).view(k, runs).cpu().tolist()
        metrics = estimate.metrics(runs == 2, inputs=False) if estimate is not None else {"purified": 0.0}
        return paired_results(errors, fitted.failures, runs, {**metrics, "purify": float(bool(self.purify))},
                              self.worst_score)


def check_regression_module(path: str, sample: torch.Tensor) -> None:
    """The factory at ``path`` builds a module mapping ``sample`` ``[N, D]`` to ``[N, 1]``; else one ConfigError
    line naming what went wrong (the factory's own failures are named by :func:`build_one`)."""
    n, d = sample.shape
    module = build_one(path, d, 1, 0)
    try:
        with torch.no_grad():
            out = module(sample)
    except Exception as exc:  # user code: any failure becomes one line naming it
        raise ConfigError(f"model factory {path!r}: its module fails on inputs of shape [{n}, {d}]: "
                          f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                          ) from None
    shape = list(getattr(out, "shape", []))
    require(isinstance(out, torch.Tensor) and shape == [n, 1],
            f"model factory {path!r} maps inputs [{n}, {d}] to {shape or type(out).__name__}; a regression model "
            f"must give [N, 1] (it is called as factory(n_features={d}, n_classes=1))")
