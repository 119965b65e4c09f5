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
* ``weight``, ``ignore_index`` and ``label_smoothing`` as in ``nn.CrossEntropyLoss``: class ``c``'s term is
  multiplied by ``weight[c]``, so the per-sample loss is ``sum_c weight[c] * L(y_pred_c, y_real_c)`` (for
  cross-entropy exactly torch's); samples whose class index is ``ignore_index`` count for nothing (0 with
  ``'none'``); ``'mean'`` divides by the summed ``weight[target]`` of the counted samples for class
  indices, and by N for class probabilities (torch's rules). ``label_smoothing`` mixes the target with the
  uniform distribution: ``(1 - e) * y_real + e / C``.
* ``problem='auto'`` (default) picks classification when ``target`` has an integer dtype and one dimension
  less than ``input``, regression when the shapes match and there is one output per sample. A float target
  of the shape of a ``[N, C, ...]`` input (``C > 1``) is ambiguous (soft labels or several regression
  outputs: the two compute different numbers) and is refused with a ``ValueError`` naming ``problem=``; so
  is an integer target of that shape (``F.one_hot`` labels, which are int64). Integer targets are class
  indices of shape ``[N, d1, ...]`` under any ``problem`` but ``'regression'``.

The functions below hold the convention and the option checks once. They are copied verbatim into ``.py``
exports, so an exported loss checks and reduces exactly as this module does; all but ``check_options`` (run
in ``__init__``) are written in the subset of Python that ``torch.jit.script`` compiles.
"""

from __future__ import annotations

import numbers
from typing import List, Literal, Optional, Sequence, Tuple

import torch
from torch import nn

from lossforge.compile import compile_expr
from lossforge.errors import ExportError
from lossforge.expression import LossExpression, Token

Reduction = Literal["mean", "sum", "none"]
Problem = Literal["auto", "regression", "classification"]


def is_classification_problem(problem: str, input: torch.Tensor, target: torch.Tensor) -> bool:
    """Whether ``(input, target)`` is read as classification under ``problem`` (see the module docstring)."""
    if not input.is_floating_point():  # else the constants would be cast to the integer dtype (2.5 -> 2)
        raise ValueError("input must be a floating-point tensor (predictions or logits), not an integer one; "
                         "pass input.float()")
    if problem == "classification":
        return True
    if problem == "regression":
        return False
    if not target.is_floating_point():
        if input.dim() >= 2 and input.shape[1] > 1 and target.shape == input.shape:
            raise ValueError(
                "problem='auto' cannot tell one-hot labels from several integer regression outputs (an integer "
                "target of the shape of the input [N, C, ...]); pass class indices (target.argmax(1)), one-hot "
                "rows as floats with problem='classification', or problem='regression'"
            )
        return input.dim() == target.dim() + 1
    if input.dim() >= 2 and input.shape[1] > 1 and target.shape == input.shape:
        raise ValueError(
            "problem='auto' cannot tell soft class targets from several regression outputs (a float target "
            "of the shape of the input [N, C, ...]); pass problem='classification' (logits and class "
            "probabilities) or problem='regression'"
        )
    return False


def class_targets(input: torch.Tensor, target: torch.Tensor, ignore_index: int = -100,
                  label_smoothing: float = 0.0) -> torch.Tensor:
    """``y_real`` of the classification convention: the one-hot (class indices) or soft (probabilities)
    target ``[N, C, ...]``, smoothed by ``label_smoothing``; an ignored sample's row is all zeros."""
    n_classes = input.shape[1]
    if target.is_floating_point():
        if target.shape != input.shape:
            raise ValueError("soft targets (class probabilities) must have the shape of the logits [N, C, ...]")
        y_real = target.to(input.dtype)
    else:
        if input.dim() < 2 or target.shape != input.select(1, 0).shape:  # [N, d1, ...] of logits [N, C, d1, ...]
            raise ValueError("integer targets are class indices [N, d1, ...] for logits [N, C, d1, ...]; pass "
                             "one-hot or soft labels as floats of the logits' shape")
        kept = target != ignore_index
        safe = torch.where(kept, target, torch.zeros_like(target)).long()
        y_real = nn.functional.one_hot(safe, n_classes).movedim(-1, 1).to(input.dtype)
        y_real = y_real * kept.unsqueeze(1).to(input.dtype)
    if label_smoothing > 0.0:
        y_real = y_real * (1.0 - label_smoothing) + label_smoothing / n_classes
    return y_real


def reduce_loss(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    """Per-sample losses reduced as ``reduction`` says (``mean`` | ``sum`` | ``none``)."""
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    return per_sample


def classification_loss(terms: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor],
                        ignore_index: int, reduction: str) -> torch.Tensor:
    """The classification loss from the expression's per-class ``terms`` ``[N, C, ...]``: weighted by class,
    summed over classes, ignored samples dropped, reduced as ``nn.CrossEntropyLoss`` reduces."""
    if weight is not None:
        if weight.numel() != terms.shape[1]:  # else a reshape error that names no option
            raise ValueError("weight has " + str(weight.numel()) + " entries but the input has "
                             + str(terms.shape[1]) + " classes; give one weight per class")
        shape: List[int] = [1] * terms.dim()
        shape[1] = terms.shape[1]
        terms = terms * weight.to(terms.dtype).reshape(shape)
    per_sample = terms.sum(dim=1)
    if target.is_floating_point():  # class probabilities: every sample counts once
        return reduce_loss(per_sample, reduction)
    kept = target != ignore_index
    per_sample = torch.where(kept, per_sample, torch.zeros_like(per_sample))
    if reduction == "mean":
        if weight is None:
            counted = kept.sum().to(per_sample.dtype)
        else:
            safe = torch.where(kept, target, torch.zeros_like(target)).long()
            counted = torch.where(kept, weight.to(per_sample.dtype)[safe], torch.zeros_like(per_sample)).sum()
        return per_sample.sum() / counted
    return reduce_loss(per_sample, reduction)


def class_probabilities(
    input: torch.Tensor, target: torch.Tensor, probabilities: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(softmax(input), one-hot or soft target)`` for logits ``[N, C, ...]`` and class indices or
    probabilities: the classification convention's ``y_pred`` and ``y_real``. ``probabilities``: the softmax
    of ``input`` when it was already computed (a trainer computes it once for a batch of models)."""
    y_pred = torch.softmax(input, dim=1) if probabilities is None else probabilities
    return y_pred, class_targets(y_pred, target)


def loss_precision(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 when it is float16 or bfloat16, as torch's autocast computes softmax and losses: in
    float16 the guards' 1e-12 is 0 and exp(30) inf (the protected log gave -inf, sqrt a NaN gradient), and a
    softmax probability below ~6e-8 is 0. Other dtypes as they are."""
    if x.dtype == torch.float16 or x.dtype == torch.bfloat16:
        return x.float()
    return x


def check_options(reduction: str, problem: str, weight: Optional[torch.Tensor], label_smoothing: float,
                  ignore_index: int = -100) -> None:
    """ValueError naming the option when one of the loss module's options is not one torch's losses take.
    Run once in ``__init__`` (plain Python, not scripted; no f-strings, as the exports' code is checked to
    hold only plain constructs)."""
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):  # 1.5 must not become class 1
        raise ValueError("ignore_index must be a whole number (a class index, default -100), not " + repr(ignore_index))
    if reduction not in ("mean", "sum", "none"):
        raise ValueError("reduction must be 'mean', 'sum' or 'none', not " + repr(reduction))
    if problem not in ("auto", "regression", "classification"):
        raise ValueError("problem must be 'auto', 'regression' or 'classification', not " + repr(problem))
    if weight is not None and (not isinstance(weight, torch.Tensor) or weight.dim() != 1):
        raise ValueError("weight must be a 1-D tensor of one weight per class (as nn.CrossEntropyLoss's)")
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, numbers.Real):
        raise ValueError("label_smoothing must be a number in [0, 1], not " + repr(label_smoothing))
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError("label_smoothing must be in [0, 1], not " + repr(label_smoothing))


def check_regression(input: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor],
                     label_smoothing: float) -> None:
    """ValueError when ``(input, target)`` read as regression meets an option that applies to classes only,
    or the two shapes differ."""
    if weight is not None:
        raise ValueError("weight is per class and applies to classification only")
    if label_smoothing > 0.0:  # silently unsmoothed targets would train another loss than asked
        raise ValueError("label_smoothing smooths class targets and applies to classification only")
    if input.shape != target.shape:
        raise ValueError("regression input " + str(list(input.shape)) + " and target " + str(list(target.shape))
                         + " must have the same shape (reshape one of them)")


class SymbolicLoss(nn.Module):
    """A loss ``L(y_pred, y_real)`` given by a symbolic expression over the operator table.

    Args:
        expression: expression text (``"(y_pred - y_real)**2"``), prefix tokens, or a LossExpression.
        reduction: ``'mean'``, ``'sum'`` or ``'none'``.
        problem: ``'auto'``, ``'regression'`` or ``'classification'`` (see module docstring).
        trainable_constants: register the expression's constants as ``nn.Parameter`` (for tuning).
        weight, ignore_index, label_smoothing: as in ``nn.CrossEntropyLoss`` (classification only).
    """

    def __init__(
        self,
        expression: LossExpression | str | Sequence[Token],
        reduction: Reduction = "mean",
        problem: Problem = "auto",
        trainable_constants: bool = False,
        weight: torch.Tensor | None = None,
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        check_options(reduction, problem, weight, label_smoothing, ignore_index)
        self.expression = LossExpression.coerce(expression)
        self.reduction = reduction
        self.problem = problem
        self.ignore_index = int(ignore_index)
        self.label_smoothing = float(label_smoothing)
        self.register_buffer("weight", weight)
        self._compiled = compile_expr(self.expression.sympy)
        values = torch.tensor(self._compiled.constants, dtype=torch.float32)
        self._exact: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}  # per device: float32, float64
        if trainable_constants:
            self.constants = nn.Parameter(values)
        else:
            self.register_buffer("constants", values)

    def __getstate__(self) -> dict:
        # the compiled closure cannot be pickled (torch.save of a model holding the loss, a pickled skorch
        # net, a spawned worker); it is rebuilt from the expression, the buffers travel as they are
        state = dict(self.__dict__)
        state.pop("_compiled", None)
        state["_exact"] = {}
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._compiled = compile_expr(self.expression.sympy)

    def __prepare_scriptable__(self) -> "SymbolicLoss":
        # torch.jit.script calls this first, also for a model holding the loss: the compiled expression is a
        # Python closure TorchScript cannot read, and its own error ("failed to convert Python type") says
        # nothing of what does compile
        raise ExportError(
            "torch.jit.script cannot compile SymbolicLoss (its expression is a Python function); script the .py "
            "export instead (`lossforge export RUN --format py`, or write "
            "lossforge.export.to_python(loss.expression) to a file and import its class), or use "
            "torch.compile(loss, fullgraph=True), which compiles SymbolicLoss as it is")

    def is_classification(self, input: torch.Tensor, target: torch.Tensor) -> bool:
        """Whether ``(input, target)`` is read as classification under this module's ``problem``."""
        return is_classification_problem(self.problem, input, target)

    def elementwise(self, y_pred: torch.Tensor, y_real: torch.Tensor,
                    log_y_pred: torch.Tensor | None = None) -> torch.Tensor:
        """The expression applied elementwise to ``y_pred`` and ``y_real`` (no reduction, no softmax).
        ``log_y_pred``: ``log_softmax`` of the logits, from which ``log(y_pred)`` is then read (exact
        cross-entropy where the protected log would clamp a probability below 1e-12). Half-precision inputs are
        computed in float32, as torch's autocast computes losses: in float16 the guards' 1e-12 is 0 and
        exp(30) is inf, so the protected log gave -inf, sqrt a NaN gradient and exp inf."""
        y_pred, y_real = loss_precision(y_pred), loss_precision(y_real)
        log_y_pred = None if log_y_pred is None else loss_precision(log_y_pred)
        constants = self.constants.to(y_pred.dtype)
        if y_pred.dtype == torch.float64 and not self.constants.requires_grad:
            constants = self._exact_constants(constants)
        return self._compiled(y_pred, y_real, constants, log_y_pred)

    def _exact_constants(self, as_float64: torch.Tensor) -> torch.Tensor:
        """The expression's exact constants in float64, as the .py export's literals, while the buffer still
        holds their float32 roundings; a buffer changed since (``load_state_dict``) is used as it is."""
        device = as_float64.device
        if device not in self._exact:
            exact = torch.tensor(self._compiled.constants, dtype=torch.float64, device=device)
            self._exact[device] = (exact.to(torch.float32), exact)
        rounded, exact = self._exact[device]
        return exact if torch.equal(self.constants.detach(), rounded) else as_float64

    @property
    def uses_log_probabilities(self) -> bool:
        """Whether the classification loss reads log-probabilities (it takes ``log(y_pred)``)."""
        return self._compiled.uses_log_probabilities

    def class_terms(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The expression's value for each class ``[N, C, ...]`` from logits and targets: the one place the
        classification convention turns logits into ``y_pred``. Half-precision logits are taken to float32
        first, as autocast runs softmax: in float16 a probability below ~6e-8 is 0."""
        input = loss_precision(input)
        y_pred = torch.softmax(input, dim=1)
        log_p = torch.log_softmax(input, dim=1) if self.uses_log_probabilities else None
        y_real = class_targets(input, target, self.ignore_index, self.label_smoothing)
        return self.elementwise(y_pred, y_real, log_p)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.is_classification(input, target):
            one = input.dim() == 1 and (target.dim() == 0 or target.shape == input.shape)
            if one:  # one sample's logits [C], as torch's losses take it: a batch of one
                input, target = input.unsqueeze(0), target.unsqueeze(0)
            loss = classification_loss(self.class_terms(input, target), target, self.weight, self.ignore_index,
                                       self.reduction)
            return loss.squeeze(0) if one and self.reduction == "none" else loss
        check_regression(input, target, self.weight, self.label_smoothing)
        return self.reduce(self.elementwise(input, target.to(input.dtype)))

    def from_class_probabilities(self, y_pred: torch.Tensor, y_real: torch.Tensor,
                                 log_probabilities: torch.Tensor | None = None) -> torch.Tensor:
        """The classification loss from :func:`class_probabilities`' output (summed over classes, reduced;
        ``weight`` applied per class, every sample counted once); ``log_probabilities``: ``log_softmax`` of
        the logits, for an exact ``log(y_pred)``."""
        return classification_loss(self.elementwise(y_pred, y_real, log_probabilities), y_real, self.weight,
                                   self.ignore_index, self.reduction)

    def reduce(self, per_sample: torch.Tensor) -> torch.Tensor:
        """Per-sample losses reduced as ``reduction`` says."""
        return reduce_loss(per_sample, self.reduction)

    def extra_repr(self) -> str:
        return f"{self.expression.formula()!r}, reduction={self.reduction!r}, problem={self.problem!r}"
