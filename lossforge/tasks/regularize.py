"""Regularisation procedures: dropout, DropBlock, entropy regularisation, label smoothing and batch norm.

Dropout, DropBlock and batch norm live in the batched models (:mod:`lossforge.models`: masks shared by all K
models, batch-norm statistics kept per model); this module adds the target- and loss-side pieces and the
:class:`RegularizeTask` that combines them with label noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from lossforge.tasks.base import check_positive_int, check_range, require
from lossforge.tasks.classification import (
    ClassificationTask,
    Classifier,
    Streams,
)
from lossforge.tasks.data import Split
from lossforge.training import BatchedTrainer


def smooth_targets(labels: torch.Tensor, n_classes: int, smoothing: float) -> torch.Tensor:
    """Label smoothing: ``(1 - smoothing) * one_hot + smoothing / C``; each row sums to 1. ``[N]`` -> ``[N, C]``."""
    one_hot = torch.nn.functional.one_hot(labels, n_classes).to(torch.float32)
    return one_hot * (1.0 - smoothing) + smoothing / n_classes


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the softmax of ``logits`` along the last dim (``[..., C]`` -> ``[...]``), in nats."""
    log_p = torch.log_softmax(logits, dim=-1)
    return -(log_p.exp() * log_p).sum(dim=-1)


def confidence(logits: torch.Tensor) -> torch.Tensor:
    """Mean top-class probability of each model, ``[K]``, from logits ``[K, N, C]``."""
    return torch.softmax(logits, dim=-1).amax(dim=-1).to(torch.float64).mean(dim=-1).cpu()


@dataclass
class RegularizeTask(ClassificationTask):
    """Label-noise classification with regularisation. **Score: accuracy on the clean test labels.**

    Settings besides :class:`ClassificationTask`'s: ``dropout`` (rate after each hidden layer, mask shared by
    the K models), ``dropblock`` (rate) and ``dropblock_size`` (CNN only), ``entropy_weight`` (beta of the
    confidence penalty ``loss - beta * H(p)``, Pereyra et al. 2017), ``label_smoothing`` (the loss then sees
    soft targets ``[N, C]``) and ``batch_norm`` (per-model statistics). Metrics: ``acc_clean`` and
    ``confidence`` (mean top-class probability on the test set).
    """

    kind_name: ClassVar[str] = "regularize"

    dropout: float = 0.2
    dropblock: float = 0.0
    dropblock_size: int = 3
    entropy_weight: float = 0.0
    label_smoothing: float = 0.1
    batch_norm: bool = False

    @property
    def scale_free(self) -> bool:
        return super().scale_free and self.entropy_weight == 0  # the confidence penalty does not scale with c

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(self.dropout, "dropout", 0.0, 0.9, high_open=False)
        check_range(self.dropblock, "dropblock", 0.0, 0.9, high_open=False)
        require(self.dropblock == 0.0 or self.model == "cnn",
                "dropblock needs model 'cnn' (it drops blocks of feature maps); set dropblock = 0 for the MLP")
        check_positive_int(self.dropblock_size, "dropblock_size")
        check_range(self.entropy_weight, "entropy_weight", 0.0, 10.0, high_open=False)
        check_range(self.label_smoothing, "label_smoothing", 0.0, 1.0)
        require(isinstance(self.batch_norm, bool), f"batch_norm must be true or false; got {self.batch_norm!r}")

    def model_options(self) -> dict[str, Any]:
        return {
            "dropout": self.dropout,
            "dropblock": self.dropblock,
            "dropblock_size": self.dropblock_size,
            "batch_norm": self.batch_norm,
        }

    def prepare_batch(
        self, x: torch.Tensor, y: torch.Tensor, streams: Streams
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.label_smoothing > 0:
            return x, smooth_targets(y, self.n_classes, self.label_smoothing).to(x.device)
        return x, y

    def train_step(
        self, model: Classifier, trainer: BatchedTrainer, x: torch.Tensor, y: torch.Tensor, streams: Streams
    ) -> None:
        if self.entropy_weight == 0:
            super().train_step(model, trainer, x, y, streams)
            return
        x, target = self.prepare_batch(x, y, streams)
        outputs = model(x, streams.dropout)
        # the confidence penalty: the trainer adds it for live models after checking the candidate's gradient
        trainer.step(outputs, target, penalty=-self.entropy_weight * entropy(outputs).mean(dim=1))

    def extra_metrics(self, model: Classifier, data: Split, streams: Streams) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return {"confidence": confidence(model(data.x_test))}
