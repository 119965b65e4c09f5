"""Classification under label noise: a loss is fit when models trained with it stay accurate.

:class:`ClassificationTask` (type ``"label_noise"``) trains K small classifiers at once, one per candidate
loss, on training labels corrupted by symmetric or class-dependent noise, and scores each by its accuracy
on the *clean* held-out labels. Cross-entropy memorises the wrong labels; robust losses (MAE, GCE) do not,
and the gap is widest with a high learning rate (Adam at 1e-2), which is the default.

The survey's three procedures subclass it: :class:`~lossforge.tasks.augment.AugmentTask`,
:class:`~lossforge.tasks.adversarial.AdversarialTask` and :class:`~lossforge.tasks.regularize.RegularizeTask`.
Suite files name a task by its ``type`` or a preset (both in :mod:`lossforge.tasks.registry`).

Everything random is drawn from named streams of ``seed`` (:func:`lossforge.tasks.data.generator`) and shared
by all K models, so batched and one-by-one scoring agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import torch
from torch import nn

from lossforge.errors import ConfigError
from lossforge.models import BatchedCNN, BatchedMLP, BatchedNormMLP
from lossforge.tasks.base import (
    LossLike,
    Task,
    TaskResult,
    check_int_list,
    check_positive_int,
    check_range,
    finite_or_worst,
    require,
    saved_tensor_bytes,
)
from lossforge.training import BatchedTrainer
from lossforge.tasks.data import (
    DIGIT_FLIPS,
    IMAGE_SHAPES,
    NOISE_KINDS,
    Split,
    add_label_noise,
    check_dataset,
    dataset_classes,
    flip_map,
    generator,
    input_standardization,
    load_split,
)

MODELS = ("mlp", "cnn")


def check_symmetric_rate(rate: float, n_classes: int) -> None:
    """Symmetric noise gives each other class ``rate / (C - 1)``: from ``(C - 1) / C`` on a wrong label is as
    likely as the right one (two classes at 0.6: the wrong one is the majority) and nothing is left to learn."""
    top = (n_classes - 1) / n_classes
    require(rate < top, f"noise_rate {rate} with {n_classes} classes makes a wrong label as likely as the right "
                        f"one (from {top:.3g} on), which leaves nothing to learn; use a rate below {top:.3g}")


def channel_major_advice(channel_last: Sequence[int]) -> str:
    """How to give rows that are ``[H, W, C]`` images: the ``image_shape`` lossforge reads, and the layout."""
    h, w, c = channel_last
    return f"give image_shape [{c}, {h}, {w}] and store each row channel by channel"


def channel_last_hint(shape: Sequence[int] | None) -> str:
    """A clause for messages about a ``[C, H, W]`` image shape that looks channel-last (``[H, W, C]`` with C at
    most 4 and below H); empty otherwise. Both readings are valid shapes, so only the user can say which."""
    if shape is None or len(shape) != 3 or not (shape[2] <= 4 and shape[2] < shape[0]):
        return ""
    c, h, w = shape
    return f"; if the rows are {c}x{h} images with {w} channels, {channel_major_advice(shape)}"
OPTIMIZERS = ("adam", "sgd")


class Classifier(nn.Module):
    """A batched MLP or CNN behind one interface: images ``[(K,) N, C, H, W]`` or signals ``[(K,) N, D]``.

    The MLP sees images flattened; ``standardize = (mean, std)`` makes the network see ``(x - mean) / std``
    while its inputs stay in [0, 1]. ``forward(x, generator)`` passes ``generator`` to dropout/DropBlock.
    """

    def __init__(
        self, body: nn.Module, flatten_images: bool, standardize: tuple[float, float] | None = None
    ) -> None:
        super().__init__()
        self.body = body
        self.flatten_images = flatten_images
        self.standardize = standardize

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.flatten_images:
            x = x.flatten(start_dim=-3)
        if self.standardize is not None:
            x = (x - self.standardize[0]) / self.standardize[1]
        return self.body(x, generator)


@dataclass
class Streams:
    """The random streams one evaluation draws from (each derived from the seed, shared by all K models),
    and ``state`` that a procedure carries between minibatches (free adversarial training's perturbation)."""

    order: torch.Generator
    augment: torch.Generator
    dropout: torch.Generator
    attack: torch.Generator
    evaluation: torch.Generator
    state: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_seed(cls, seed: int) -> "Streams":
        return cls(*(generator(seed, name) for name in ("order", "augment", "dropout", "attack", "evaluation")))


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Accuracy of each model, ``[K]``, from logits ``[K, N, C]`` and class indices ``[N]``."""
    return (logits.argmax(dim=-1) == labels).to(torch.float64).mean(dim=-1).cpu()


@dataclass
class ClassificationTask(Task):
    """Label-noise classification. **Score: accuracy on the clean test labels** (metric ``acc_clean``).

    Settings: ``dataset`` ("digits" | "mnist" | "mnist1d"), ``test_fraction`` held out, ``n_train`` (cap on
    training samples, None = all), ``noise`` ("none" | "symmetric" | "asymmetric" | "pair") at ``noise_rate``
    on the training labels only, ``model`` ("mlp" with ``hidden`` sizes | "cnn" with conv ``channels``, then
    ``hidden``), ``epochs``, ``batch_size``, ``lr``, ``optimizer`` ("adam" | "sgd" with momentum 0.9),
    ``weight_decay``.
    """

    kind_name: ClassVar[str] = "label_noise"
    problem: ClassVar[str] = "classification"
    reference: ClassVar[str] = "cross_entropy"
    worst_score: ClassVar[float] = 0.0
    #: whether ``model`` may name a user model factory ``package.module:factory`` (the own-data tasks)
    user_models: ClassVar[bool] = False

    dataset: str = "digits"
    test_fraction: float = 0.3
    n_train: int | None = None
    noise: str = "symmetric"
    noise_rate: float = 0.4
    model: str = "mlp"
    hidden: tuple[int, ...] = (128,)
    channels: tuple[int, ...] = (8, 16)
    epochs: int = 40
    batch_size: int = 128
    lr: float = 1e-2
    optimizer: str = "adam"
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        self.check_data()
        check_range(self.test_fraction, "test_fraction", 0.05, 0.95, high_open=False)
        if self.n_train is not None:
            check_positive_int(self.n_train, "n_train")
        require(self.noise in NOISE_KINDS, f"noise must be one of {list(NOISE_KINDS)}; got {self.noise!r}")
        # class-dependent noise at >= 50 % makes the wrong class the majority: nothing left to learn
        high = 0.5 if self.noise in ("asymmetric", "pair") else 0.9
        check_range(self.noise_rate, "noise_rate", 0.0, high)
        require(self.model in MODELS or (self.user_models and ":" in str(self.model)),
                f"model must be one of {list(MODELS)}; got {self.model!r}")
        require(self.model != "cnn" or self.image_shape is not None,
                f"model 'cnn' needs an image dataset ({sorted(IMAGE_SHAPES)}) or image_shape; use model 'mlp' for "
                f"{self.dataset!r}")
        self.hidden = check_int_list(self.hidden, "hidden", allow_empty=True)
        self.channels = check_int_list(self.channels, "channels", allow_empty=False)
        if self.model == "cnn":
            size = min(self.image_layout()[1:])
            require(size >> len(self.channels) > 0,
                    f"channels has {len(self.channels)} pooling blocks, too many for {size}px images; use fewer"
                    f"{channel_last_hint(self.image_shape)}")
        check_positive_int(self.epochs, "epochs")
        check_positive_int(self.batch_size, "batch_size")
        check_range(self.lr, "lr", 1e-8, 10.0)
        require(self.optimizer in OPTIMIZERS, f"optimizer must be one of {list(OPTIMIZERS)}; got {self.optimizer!r}")
        check_range(self.weight_decay, "weight_decay", 0.0, 1.0)

    # --- pieces subclasses adjust -------------------------------------------------------------------------

    def model_options(self) -> dict[str, Any]:
        """Keyword options of the model body (regularisation adds dropout, DropBlock, batch norm)."""
        return {}

    def prepare_batch(
        self, x: torch.Tensor, y: torch.Tensor, streams: Streams
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets the loss sees for one minibatch (augmentation and smoothing change them)."""
        return x, y

    def train_step(
        self, model: Classifier, trainer: BatchedTrainer, x: torch.Tensor, y: torch.Tensor, streams: Streams
    ) -> None:
        """One optimisation step of all K models on minibatch ``(x, y)`` (noisy labels)."""
        x, target = self.prepare_batch(x, y, streams)
        trainer.step(model(x, streams.dropout), target)

    def extra_metrics(self, model: Classifier, data: Split, streams: Streams) -> dict[str, torch.Tensor]:
        """Metrics besides clean accuracy, each ``[K]`` (model in eval mode)."""
        return {}

    def score(self, metrics: dict[str, float]) -> float:
        """The task's score from one model's metrics."""
        return metrics["acc_clean"]

    # --- the fixed frame ----------------------------------------------------------------------------------

    def check_data(self) -> None:
        """Validate the data settings (own-data tasks check theirs instead)."""
        check_dataset(self.dataset)
        # asymmetric noise flips digit look-alikes; a data set without those classes would train noise-free
        if self.noise == "symmetric" and isinstance(self.noise_rate, (int, float)):  # the range is checked later
            check_symmetric_rate(self.noise_rate, self.n_classes)
        require(self.noise != "asymmetric" or bool(flip_map("asymmetric", self.n_classes)),
                f"noise 'asymmetric' flips digit look-alikes ({', '.join(f'{s}->{d}' for s, d in DIGIT_FLIPS.items())}"
                f"), and dataset {self.dataset!r} has {self.n_classes} classes, so no label would change; "
                "use noise 'pair' or 'symmetric'")

    @property
    def image_shape(self) -> tuple[int, int] | None:
        """``(H, W)`` of the data set's images, or None for flat signals."""
        return IMAGE_SHAPES.get(self.dataset)

    def image_layout(self) -> tuple[int, int, int] | None:
        """``(C, H, W)`` of image inputs (``image_shape`` ``(H, W)`` is one channel), or None for flat signals."""
        shape = self.image_shape
        if shape is None:
            return None
        return (1, *shape) if len(shape) == 2 else tuple(shape)  # type: ignore[return-value]

    @property
    def n_classes(self) -> int:
        """Number of classes, from the data."""
        return dataset_classes(self.dataset)

    def data(self, seed: int) -> Split:
        """The seed's split with noisy training labels (test labels stay clean)."""
        split = load_split(self.dataset, seed, self.test_fraction, self.n_train)
        noisy = add_label_noise(split.y_train, split.n_classes, self.noise, self.noise_rate, generator(seed, "noise"))
        return Split(split.x_train, noisy, split.x_test, split.y_test, split.n_classes)

    def build_model(self, n_models: int, n_features: int, n_classes: int, init: torch.Generator) -> Classifier:
        """K identically initialised classifiers (weights drawn once from ``init``)."""
        options = self.model_options()
        if self.model == "cnn":
            c, h, w = self.image_layout()
            body = BatchedCNN(n_models, c, (h, w), n_classes, init, self.channels, self.hidden, **options)
            return Classifier(body, flatten_images=False)
        batch_norm = options.pop("batch_norm", False)
        options.pop("dropblock", None)
        options.pop("dropblock_size", None)
        cls = BatchedNormMLP if batch_norm else BatchedMLP
        body = cls(n_models, [n_features, *self.hidden, n_classes], init, **options)
        return Classifier(body, self.image_shape is not None, input_standardization(self.dataset))

    @property
    def scale_free(self) -> bool:
        # Adam's step is invariant to the loss's scale; weight decay and SGD's step are not (PGD's attack
        # steps follow the gradient's sign, so they are)
        return self.optimizer == "adam" and self.weight_decay == 0

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """The configured optimiser (element-wise, so each model's update depends on its own weights only)."""
        if self.optimizer == "adam":
            return torch.optim.Adam(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        return torch.optim.SGD(model.parameters(), lr=self.lr, momentum=0.9, weight_decay=self.weight_decay)

    def memory_per_model(self) -> int:
        """One model's activations for a minibatch, measured through autograd and scaled up to the test set
        when that is larger (all K models are tested at once), plus weights, gradients and two optimiser
        moments. Measured on seed 0's data."""
        data = self.data(0)
        model = self.build_model(1, data.x_train[0].numel(), data.n_classes, generator(0, "init"))
        batch = data.x_train[: self.batch_size]
        per_sample = saved_tensor_bytes(lambda: model(batch).sum()) / len(batch)
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        return int(per_sample * max(len(batch), len(data.x_test)) + 4 * weights)

    def epochs_to_run(self) -> int:
        """Passes over the training set (free adversarial training replays batches and runs fewer)."""
        return self.epochs

    def evaluate(self, losses: Sequence[LossLike], seed: int, device: str = "cpu") -> list[TaskResult]:
        """Train one classifier per loss (batched) on ``seed``; score each on the clean test set."""
        if not losses:
            return []
        data = self.data(seed).to(device)
        n_features = data.x_train[0].numel()
        model = self.build_model(len(losses), n_features, data.n_classes, generator(seed, "init")).to(device)
        trainer = BatchedTrainer(model, losses, self.make_optimizer(model))
        streams = Streams.from_seed(seed)
        n = len(data.y_train)
        model.train()
        for _ in range(self.epochs_to_run()):
            order = torch.randperm(n, generator=streams.order).to(device)
            for start in range(0, n, self.batch_size):
                idx = order[start : start + self.batch_size]
                self.train_step(model, trainer, data.x_train[idx], data.y_train[idx], streams)
        model.eval()
        with torch.no_grad():
            logits = model(data.x_test)
        finite = torch.isfinite(logits).flatten(start_dim=1).all(dim=1).cpu()
        metrics = {"acc_clean": accuracy(logits, data.y_test), **self.extra_metrics(model, data, streams)}
        results = []
        for k, failure in enumerate(trainer.failures):
            if failure is not None:
                results.append(TaskResult.failed(failure, self.worst_score))
            elif not finite[k]:
                results.append(TaskResult.failed("non-finite outputs on the test inputs", self.worst_score))
            else:
                values = {name: float(v[k]) for name, v in metrics.items()}
                results.append(TaskResult(finite_or_worst(self.score(values), self.worst_score), values))
        return results
