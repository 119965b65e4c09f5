"""The fast trainer of batched MLPs: numpy forward and backward passes, analytic loss gradients, no autograd.

Training a candidate's 49-parameter regression MLP is bound by per-operation overhead, not arithmetic: a
step is a few dozen tiny operations per model plus one loss expression per model. This trainer cuts both:

* each symbolic loss is evaluated with its derivative along ``y_pred`` by a numpy kernel
  (:func:`lossforge.compile.compile_value_and_grad`): a numpy operation on a few hundred values costs about a
  quarter of a torch one, and no autograd graph is recorded or walked for the K loss expressions;
* a loss shared by several models (a candidate's noisy and purified runs) is evaluated once for all of them;
* the network's backward pass is written out (about ten batched operations for all K models), and Adam
  updates one flat parameter buffer ``[K, P]`` in a handful of operations.

It follows :class:`lossforge.training.BatchedTrainer`'s rules exactly (one :class:`~lossforge.training.FailureLedger`
writes both trainers' failure reasons, failed models are frozen, the same Adam) and torch's ``Adam(foreach=True)`` arithmetic; its results agree
with the autograd trainer's to float32 rounding, which chaotic losses can amplify over hundreds of steps
(``tests/test_numpy_mlp.py`` compares them). Model k's numbers never depend on K: every operation is
elementwise, a reduction over one model's samples, or a matrix product that numpy computes one model at a
time. Losses without a symbolic expression fall back to torch autograd, one model at a time. The model is
read and written through :class:`~lossforge.models.BatchedMLP`'s documented parameter interface.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from lossforge.compile import GradKernel, compile_value_and_grad
from lossforge.loss import SymbolicLoss
from lossforge.models import BatchedMLP
from lossforge.training import EXPLODING_GRAD_NORM, NUMERIC_ERRORS, FailureLedger, FitResult, LossLike, guarded_loss

#: Activations this trainer differentiates by hand (others train with the autograd trainer).
ACTIVATIONS = ("tanh", "relu")
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8

Array = np.ndarray


@dataclass
class _LossGroup:
    """Consecutive models ``start:stop`` trained with one loss object (evaluated once for all of them)."""

    start: int
    stop: int
    loss: LossLike
    kernel: GradKernel | None
    constants: tuple[float, ...]
    summed: bool  # the loss sums over samples (reduction 'sum') instead of averaging


def supports(model: torch.nn.Module, activation: str, device: str | torch.device) -> bool:
    """Whether :class:`NumpyMLPTrainer` can train ``model`` (a CPU float32 :class:`BatchedMLP` with one
    output, a supported activation and no dropout; not a subclass, which may compute more, e.g. batch norm)."""
    return (
        torch.device(device).type == "cpu"
        and type(model) is BatchedMLP
        and model.sizes[-1] == 1
        and activation in ACTIVATIONS
        and not model.dropout
        and all(p.dtype == torch.float32 for p in model.parameters())
    )


class NumpyMLPTrainer:
    """Trains the K models of a :class:`BatchedMLP` with full-batch Adam, model k on loss k (a
    :class:`~lossforge.training.Trainer`).

    ``failures[k]`` holds the first reason model k failed (written by the shared ledger), or None.
    """

    def __init__(
        self,
        model: BatchedMLP,
        losses: Sequence[LossLike],
        activation: str,
        max_grad_norm: float = EXPLODING_GRAD_NORM,
    ) -> None:
        if activation not in ACTIVATIONS:
            raise ValueError(f"the numpy trainer supports activations {ACTIVATIONS}, not {activation!r}")
        self.model = model
        self.activation = activation
        self.n_models = len(losses)
        if self.n_models != model.n_models:
            raise ValueError(f"{self.n_models} losses for a batch of {model.n_models} models")
        self.ledger = FailureLedger(self.n_models, max_grad_norm)
        self.failures = self.ledger.failures  # the ledger's list (not a copy)
        self.dead = self.ledger.dead  # the ledger's mask (not a copy)
        self.groups = _groups(losses)
        self.summed = np.array([g.summed for g in self.groups for _ in range(g.start, g.stop)])
        self.steps = 0
        # One flat buffer per quantity, [K, P], laid out as torch's parameters are (each layer's weight
        # [in, out], then its bias [out]): each layer is a view [K, in + 1, out], its bias the last row.
        # Layers then compute as one matrix product of inputs with a column of ones appended.
        layer_parameters = model.layer_parameters()
        sizes = [(weight.shape[1], weight.shape[2]) for weight, _ in layer_parameters]
        parameters = [p for pair in layer_parameters for p in pair]
        self.theta = np.concatenate(
            [p.detach().reshape(self.n_models, -1).numpy() for p in parameters], axis=1
        ).astype(np.float32)
        self.grad = np.zeros_like(self.theta)
        self.exp_avg = np.zeros_like(self.theta)
        self.exp_avg_sq = np.zeros_like(self.theta)
        self.layers, self.grad_layers = [], []
        offset = 0
        for n_in, n_out in sizes:
            size = (n_in + 1) * n_out
            self.layers.append(self.theta[:, offset : offset + size].reshape(self.n_models, n_in + 1, n_out))
            self.grad_layers.append(self.grad[:, offset : offset + size].reshape(self.n_models, n_in + 1, n_out))
            offset += size
        assert all(np.shares_memory(layer, self.theta) for layer in self.layers)  # views, not copies
        self._buffers: dict[tuple, Array] = {}

    def _buffer(self, name: str, shape: tuple[int, ...], ones_column: bool = False) -> Array:
        """A reused work array; with ``ones_column`` its last column is 1 (the bias input), else 0."""
        key = (name, shape)
        if key not in self._buffers:
            buffer = np.zeros(shape, dtype=np.float32)
            if ones_column:
                buffer[..., -1] = 1.0
            self._buffers[key] = buffer
        return self._buffers[key]

    # ------------------------------------------------------------------------------------------ passes

    def augmented_inputs(self, x: Array, name: str = "x") -> Array:
        """Inputs ``[K, N, in]`` (or shared ``[N, in]``) with a column of ones appended: ``[K, N, in + 1]``."""
        n_in = x.shape[-1]
        out = self._buffer(name, (self.n_models, x.shape[-2], n_in + 1), ones_column=True)
        out[..., :n_in] = x
        return out

    def forward(self, x_aug: Array) -> tuple[Array, list[Array]]:
        """Outputs ``[K, N]`` for augmented inputs (see :meth:`augmented_inputs`), and each layer's augmented
        input (kept for the backward pass)."""
        inputs = [x_aug]
        h = x_aug
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            pre = np.matmul(h, layer)  # numpy multiplies stacked matrices one model at a time
            if i == last:
                return pre[..., 0], inputs
            h = np.empty((*pre.shape[:-1], pre.shape[-1] + 1), dtype=np.float32)
            h[..., -1] = 1.0
            if self.activation == "tanh":
                np.tanh(pre, out=h[..., :-1])
            else:
                np.maximum(pre, np.float32(0), out=h[..., :-1])
            inputs.append(h)
        raise AssertionError("unreachable: an MLP has at least one layer")

    def backward(self, grad_output: Array, inputs: list[Array]) -> None:
        """Fill ``self.grad`` from the gradient of the summed losses with respect to the outputs ``[K, N]``."""
        g = grad_output[..., None]
        for i in range(len(self.layers) - 1, -1, -1):
            self.grad_layers[i][...] = np.matmul(inputs[i].transpose(0, 2, 1), g)  # weights and bias at once
            if i == 0:
                return
            weights_t = self.layers[i][:, :-1, :].transpose(0, 2, 1)  # [K, out, in]
            if g.shape[-1] == 1:
                # numpy's product with an inner dimension of 1 takes a slow generic loop: pad it to 2 with zeros
                g_pad = self._buffer("g_pad", (*g.shape[:-1], 2))
                w_pad = self._buffer("w_pad", (self.n_models, 2, weights_t.shape[-1]))
                g_pad[..., 0] = g[..., 0]
                w_pad[:, 0, :] = weights_t[:, 0, :]
                g = np.matmul(g_pad, w_pad)
            else:
                g = np.matmul(g, weights_t)
            h = inputs[i][..., :-1]  # the previous layer's activation output
            if self.activation == "tanh":
                g *= 1 - h * h
            else:
                g *= h > 0

    # ------------------------------------------------------------------------------------------- step

    def step(self, x: Array, targets: Array, lr: float) -> Array:
        """One Adam step of every live model on augmented inputs ``x`` (:meth:`augmented_inputs`) and targets
        ``[K, N]``; returns the per-model mean losses (0 for failed models)."""
        outputs, inputs = self.forward(x)  # x: augmented inputs
        values, grad_output = self.losses(outputs, targets)
        self.backward(grad_output, inputs)
        self.check_gradients()
        self.adam(lr)
        self.steps += 1
        return values

    def losses(self, outputs: Array, targets: Array) -> tuple[Array, Array]:
        """Per-model mean loss ``[K]`` and the gradient of their sum with respect to ``outputs``."""
        elementwise = np.zeros_like(outputs)
        grad = np.zeros_like(outputs)
        for group in self.groups:
            rows = slice(group.start, group.stop)
            if all(self.failures[k] is not None for k in range(group.start, group.stop)):
                continue
            try:
                if group.kernel is not None:
                    elementwise[rows], grad[rows] = group.kernel(outputs[rows], targets[rows], group.constants)
                else:
                    elementwise[rows], grad[rows] = _autograd_elementwise(group.loss, outputs[rows], targets[rows])
            except NUMERIC_ERRORS as exc:
                for k in range(group.start, group.stop):
                    self.ledger.loss_raised(k, exc)
        # One reduction and one scaling for all K models: mean over samples, or sum for reduction='sum'.
        values = np.where(self.summed, elementwise.sum(axis=1), elementwise.mean(axis=1))
        grad *= np.where(self.summed, np.float32(1), np.float32(1 / outputs.shape[1]))[:, None]
        self.ledger.check_values(np.isfinite(values), self.steps)
        values[self.dead] = 0.0
        grad[self.dead] = 0.0
        return values, grad

    def check_gradients(self) -> None:
        """Fail models with non-finite or exploding gradients (or none at all), and zero failed models'."""
        # Squares summed in float32, as BatchedTrainer does: a finite gradient whose squares overflow counts
        # as non-finite in both trainers.
        norms = np.sqrt((self.grad * self.grad).sum(axis=1).astype(np.float64))
        self.ledger.check_gradient_norms(norms, self.steps)
        if self.dead.any():
            self.grad[self.dead] = 0.0

    def adam(self, lr: float) -> None:
        """torch's Adam (no weight decay, no amsgrad) on the flat buffer, in its foreach arithmetic."""
        beta1, beta2 = ADAM_BETAS
        t = self.steps + 1
        self.exp_avg += (self.grad - self.exp_avg) * np.float32(1 - beta1)  # lerp, as torch
        self.exp_avg_sq *= np.float32(beta2)
        self.exp_avg_sq += self.grad * self.grad * np.float32(1 - beta2)
        bias_correction1 = 1 - beta1**t
        bias_correction2_sqrt = math.sqrt(1 - beta2**t)
        denominator = np.sqrt(self.exp_avg_sq) / np.float32(bias_correction2_sqrt) + np.float32(ADAM_EPS)
        self.theta -= np.float32(lr / bias_correction1) * (self.exp_avg / denominator)

    def fail(self, k: int, reason: str) -> None:
        """Mark model k failed (first reason wins)."""
        self.ledger.fail(k, reason)

    # ------------------------------------------------------------------------------------------- loop

    @classmethod
    def supports(cls, model: torch.nn.Module, device: str | torch.device) -> bool:
        return supports(model, getattr(model, "activation_name", ""), device)

    @classmethod
    def create(cls, model: BatchedMLP, losses: Sequence[LossLike], *, lr: float) -> "NumpyMLPTrainer":
        return cls(model, losses, model.activation_name)  # the learning rate is given per step to fit

    def fit(
        self,
        x: torch.Tensor,
        targets: torch.Tensor,
        steps: int,
        lr_at: Callable[[int], float],
        record: bool = False,
        x_test: torch.Tensor | None = None,
        y_test: torch.Tensor | None = None,
    ) -> FitResult:
        """Train for ``steps`` steps with learning rate ``lr_at(step)``, then write the weights back into the
        model. With ``record``, the result keeps the per-step losses ``[steps, K]`` and, given a test set,
        the test RMSEs before each step."""
        x_np = self.augmented_inputs(x.detach().numpy())
        t_np = targets.detach().numpy().astype(np.float32, copy=False)
        train_loss, test_rmse = [], []
        recording_test = record and x_test is not None and y_test is not None
        if recording_test:
            x_test_np = self.augmented_inputs(x_test.detach().numpy(), "x_test")
            y_test_np = y_test.detach().numpy().astype(np.float64)
        with np.errstate(all="ignore"):  # non-finite numbers are checked for, not warned about
            for step in range(steps):
                if recording_test:
                    pred = self.forward(x_test_np)[0].astype(np.float64)
                    test_rmse.append(np.sqrt(((pred - y_test_np) ** 2).mean(axis=-1)))
                values = self.step(x_np, t_np, lr_at(step))
                if record:
                    train_loss.append(values)
        self.write_back()
        return FitResult(
            self.model,
            list(self.failures),
            torch.from_numpy(np.stack(train_loss)) if train_loss else None,
            torch.from_numpy(np.stack(test_rmse)) if test_rmse else None,
        )

    def write_back(self) -> None:
        """Copy the trained weights into the model's parameters."""
        with torch.no_grad():
            for (weight, bias), weights in zip(self.model.layer_parameters(), self.layers):
                weight.copy_(torch.from_numpy(np.ascontiguousarray(weights[:, :-1, :])))
                bias.copy_(torch.from_numpy(np.ascontiguousarray(weights[:, -1, :])))


def _groups(losses: Sequence[LossLike]) -> list[_LossGroup]:
    """Runs of consecutive models that share one loss object, with the loss's numpy kernel where it has one."""
    groups: list[_LossGroup] = []
    for k, loss in enumerate(losses):
        if groups and groups[-1].loss is loss:
            groups[-1].stop = k + 1
            continue
        kernel, constants = None, ()
        if isinstance(loss, SymbolicLoss) and loss.problem != "classification" and not loss.constants.requires_grad:
            kernel = compile_value_and_grad(loss.expression.sympy)
            constants = tuple(float(c) for c in loss.constants.tolist())
        # A kernel gives per-sample values, reduced here as the loss would; a fallback's own reduction stands.
        summed = kernel is not None and loss.reduction == "sum"
        groups.append(_LossGroup(k, k + 1, loss, kernel, constants, summed))
    return groups


def _autograd_elementwise(loss: LossLike, outputs: Array, targets: Array) -> tuple[Array, Array]:
    """Per-sample losses and the gradient of their sum, through torch autograd, one model at a time: for
    losses without a numpy kernel. A loss that returns one number (already a mean) counts as that number for
    every sample."""
    values, grads = np.zeros_like(outputs), np.zeros_like(outputs)
    n = outputs.shape[1]
    for i in range(len(outputs)):
        leaf = torch.from_numpy(outputs[i].copy()).requires_grad_()
        value = guarded_loss(loss)(leaf, torch.from_numpy(targets[i].copy()))
        per_sample = value.dim() > 0
        values[i] = value.detach().numpy() if per_sample else float(value.detach())
        (grad,) = torch.autograd.grad(value.sum(), leaf)
        grads[i] = grad.numpy() if per_sample else grad.numpy() * n
    return values, grads
