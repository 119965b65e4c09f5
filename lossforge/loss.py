"""``SymbolicLoss``: a discovered loss as an ordinary PyTorch loss module.

Conventions (as torch's own losses):

* ``forward(input, target)``; ``reduction`` is ``'mean'`` (default), ``'sum'`` or ``'none'``.
* **Regression**: ``input`` and ``target`` are float tensors of the same shape; the expression is applied
  elementwise with ``y_pred = input`` and ``y_real = target``; ``'none'`` returns the elementwise losses.
* **Classification**: ``input`` holds logits ``[N, C]`` (or ``[N, C, d1, ...]``); ``target`` holds class
  indices ``[N]`` (``[N, d1, ...]``) or class probabilities of the same shape as ``input`` (soft labels from
  mixup, CutMix or label smoothing). ``y_pred`` is the softmax probability of each class and ``y_real`` the
  one-hot (or soft) target; the per-sample loss is the expression **summed over classes**; ``'none'``
  returns one value per sample.
* ``problem='auto'`` (default) picks classification when ``target`` has an integer dtype and one dimension
  less than ``input``, regression otherwise; pass ``problem='classification'`` for soft targets.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
from torch import nn

from lossforge.compile import compile_expr
from lossforge.expression import LossExpression, Token

Reduction = Literal["mean", "sum", "none"]
Problem = Literal["auto", "regression", "classification"]


def class_probabilities(
    input: torch.Tensor, target: torch.Tensor, probabilities: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(softmax(input), one-hot or soft target)`` for logits ``[N, C, ...]`` and class indices or
    probabilities: the classification convention's ``y_pred`` and ``y_real``. ``probabilities``: the softmax
    of ``input`` when it was already computed (a trainer computes it once for a batch of models)."""
    y_pred = torch.softmax(input, dim=1) if probabilities is None else probabilities
    if target.is_floating_point():
        if target.shape != input.shape:
            raise ValueError(
                f"soft targets must have the shape of the logits {tuple(input.shape)}, got {tuple(target.shape)}"
            )
        return y_pred, target.to(y_pred.dtype)
    return y_pred, nn.functional.one_hot(target.long(), input.shape[1]).movedim(-1, 1).to(y_pred.dtype)


class SymbolicLoss(nn.Module):
    """A loss ``L(y_pred, y_real)`` given by a symbolic expression over the operator table.

    Args:
        expression: expression text (``"(y_pred - y_real)**2"``), prefix tokens, or a LossExpression.
        reduction: ``'mean'``, ``'sum'`` or ``'none'``.
        problem: ``'auto'``, ``'regression'`` or ``'classification'`` (see module docstring).
        trainable_constants: register the expression's constants as ``nn.Parameter`` (for tuning).
    """

    def __init__(
        self,
        expression: LossExpression | str | Sequence[Token],
        reduction: Reduction = "mean",
        problem: Problem = "auto",
        trainable_constants: bool = False,
    ) -> None:
        super().__init__()
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', not {reduction!r}")
        if problem not in ("auto", "regression", "classification"):
            raise ValueError(f"problem must be 'auto', 'regression' or 'classification', not {problem!r}")
        self.expression = LossExpression.coerce(expression)
        self.reduction = reduction
        self.problem = problem
        self._compiled = compile_expr(self.expression.sympy)
        values = torch.tensor(self._compiled.constants, dtype=torch.float32)
        if trainable_constants:
            self.constants = nn.Parameter(values)
        else:
            self.register_buffer("constants", values)

    def is_classification(self, input: torch.Tensor, target: torch.Tensor) -> bool:
        """Whether ``(input, target)`` is read as classification under this module's ``problem``."""
        if self.problem != "auto":
            return self.problem == "classification"
        return not target.is_floating_point() and input.dim() == target.dim() + 1

    def elementwise(self, y_pred: torch.Tensor, y_real: torch.Tensor,
                    log_y_pred: torch.Tensor | None = None) -> torch.Tensor:
        """The expression applied elementwise to ``y_pred`` and ``y_real`` (no reduction, no softmax).
        ``log_y_pred``: ``log_softmax`` of the logits, from which ``log(y_pred)`` is then read (exact
        cross-entropy where the protected log would clamp a probability below 1e-12)."""
        return self._compiled(y_pred, y_real, self.constants.to(y_pred.dtype), log_y_pred)

    @property
    def uses_log_probabilities(self) -> bool:
        """Whether the classification loss reads log-probabilities (it takes ``log(y_pred)``)."""
        return self._compiled.uses_log_probabilities

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.is_classification(input, target):
            log_p = torch.log_softmax(input, dim=1) if self.uses_log_probabilities else None
            return self.from_class_probabilities(*class_probabilities(input, target), log_p)
        if input.shape != target.shape:
            raise ValueError(
                f"regression input {tuple(input.shape)} and target {tuple(target.shape)} must have "
                "the same shape (reshape one of them)"
            )
        return self.reduce(self.elementwise(input, target.to(input.dtype)))

    def from_class_probabilities(self, y_pred: torch.Tensor, y_real: torch.Tensor,
                                 log_probabilities: torch.Tensor | None = None) -> torch.Tensor:
        """The classification loss from :func:`class_probabilities`' output (summed over classes, reduced);
        ``log_probabilities``: ``log_softmax`` of the logits, for an exact ``log(y_pred)``."""
        return self.reduce(self.elementwise(y_pred, y_real, log_probabilities).sum(dim=1))

    def reduce(self, per_sample: torch.Tensor) -> torch.Tensor:
        """Per-sample losses reduced as ``reduction`` says."""
        if self.reduction == "mean":
            return per_sample.mean()
        if self.reduction == "sum":
            return per_sample.sum()
        return per_sample

    def extra_repr(self) -> str:
        return f"{self.expression.formula()!r}, reduction={self.reduction!r}, problem={self.problem!r}"
