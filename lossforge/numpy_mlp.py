"""The fast trainer of batched MLPs: numpy forward and backward passes, analytic loss gradients, no autograd.

Training a candidate's 49-parameter regression MLP is bound by per-operation overhead, not arithmetic: a
step is a few dozen tiny operations per model plus one loss expression per model. This trainer cuts both:

* each symbolic loss is evaluated with its derivative along ``y_pred`` by a numpy kernel
  (:func:`lossforge.compile.compile_value_and_grad`): a numpy operation on a few hundred values costs about a
  quarter of a torch one, and no autograd graph is recorded or walked for the K loss expressions;
* a loss shared by several models (a candidate's noisy and purified runs) is evaluated once for all of them;
* the network's backward pass is written out (about ten batched operations for all K models), and Adam
  updates one flat parameter buffer ``[K, P]`` in a handful of operations.

It follows :class:`lossforge.nn.BatchedTrainer`'s rules exactly (the same failure reasons at the same
steps, failed models frozen, the same Adam) and torch's ``Adam(foreach=True)`` arithmetic; its results agree
with the autograd trainer's to float32 rounding, which chaotic losses can amplify over hundreds of steps
(``tests/test_numpy_mlp.py`` compares them). Model k's numbers never depend on K: every operation is
elementwise, a reduction over one model's samples, or a matrix product that numpy computes one model at a
time. Losses without a symbolic expression fall back to torch autograd, one model at a time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from lossforge.compile import GradKernel, compile_value_and_grad
from lossforge.loss import SymbolicLoss
from lossforge.nn import BatchedMLP
from lossforge.tasks.base import EXPLODING_GRAD_NORM, LossLike

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


def supports(model: BatchedMLP, activation: str, device: str | torch.device) -> bool:
    """Whether :class:`NumpyMLPTrainer` can train ``model`` (a CPU float32 MLP with a supported activation)."""
    return (
        torch.device(device).type == "cpu"
        and activation in ACTIVATIONS
        and not model.dropout
        and all(p.dtype == torch.float32 for p in model.parameters())
    )


class NumpyMLPTrainer:
    """Trains the K models of a :class:`BatchedMLP` with full-batch Adam, model k on loss k.

    ``failures[k]`` holds the first reason model k failed (the reasons of ``BatchedTrainer``), or None.
    """

    def __init__(
        self,
        model: BatchedMLP,
        losses: Sequence[LossLike],
        activation: str,
        lr: float,
        max_grad_norm: float = EXPLODING_GRAD_NORM,
    ) -> None:
        if activation not in ACTIVATIONS:
            raise ValueError(f"the numpy trainer supports activations {ACTIVATIONS}, not {activation!r}")
        self.model = model
        self.activation = activation
        self.lr = lr
        self.max_grad_norm = max_grad_norm
        self.n_models = len(losses)
        if self.n_models != len(model.layers[0].weight):
            raise ValueError(f"{self.n_models} losses for a batch of {len(model.layers[0].weight)} models")
        self.failures: list[str | None] = [None] * self.n_models
        self.dead = np.zeros(self.n_models, dtype=bool)
        self.groups = _groups(losses)
        self.steps = 0
        # One flat buffer per quantity, [K, P]; each layer's weight and bias are views into it.
        shapes = [(layer.weight.shape[1:], layer.bias.shape[1:]) for layer in model.layers]
        sizes = [math.prod(s) for pair in shapes for s in pair]
        self.theta = np.concatenate(
            [p.detach().reshape(self.n_models, -1).numpy() for layer in model.layers for p in (layer.weight, layer.bias)],
            axis=1,
        ).astype(np.float32)
        self.grad = np.zeros_like(self.theta)
        self.exp_avg = np.zeros_like(self.theta)
        self.exp_avg_sq = np.zeros_like(self.theta)
        self.weights, self.biases, self.grad_weights, self.grad_biases = [], [], [], []
        offset = 0
        for (w_shape, b_shape), w_size, b_size in zip(shapes, sizes[0::2], sizes[1::2]):
            for flat, ws, bs in ((self.theta, self.weights, self.biases), (self.grad, self.grad_weights, self.grad_biases)):
                ws.append(flat[:, offset : offset + w_size].reshape(self.n_models, *w_shape))
                bs.append(flat[:, offset + w_size : offset + w_size + b_size])
            offset += w_size + b_size

    # ------------------------------------------------------------------------------------------ passes

    def forward(self, x: Array) -> tuple[Array, list[Array]]:
        """Outputs ``[K, N]`` for inputs ``[K, N, in]`` or shared ``[N, in]``, and each layer's input."""
        inputs = []
        h = x if x.ndim == 3 else np.broadcast_to(x, (self.n_models, *x.shape))
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            inputs.append(h)
            if w.shape[1] == 1:  # one input feature: an outer product, elementwise
                h = h * w + b[:, None, :]
            else:  # numpy multiplies stacked matrices one model at a time
                h = np.matmul(h, w) + b[:, None, :]
            if i < last:
                h = np.tanh(h) if self.activation == "tanh" else np.maximum(h, np.float32(0))
        return h[..., 0], inputs

    def backward(self, grad_output: Array, inputs: list[Array]) -> None:
        """Fill ``self.grad`` from the gradient of the summed losses with respect to the outputs ``[K, N]``."""
        g = grad_output[..., None]
        for i in range(len(self.weights) - 1, -1, -1):
            h_in = inputs[i]
            self.grad_weights[i][...] = np.matmul(h_in.transpose(0, 2, 1), g)
            self.grad_biases[i][...] = g.sum(axis=1)
            if i == 0:
                break
            w = self.weights[i]
            g = g * w[:, :, 0][:, None, :] if w.shape[2] == 1 else np.matmul(g, w.transpose(0, 2, 1))
            # h_in is the previous layer's activation output
            g = g * (1 - h_in * h_in) if self.activation == "tanh" else g * (h_in > 0)

    # ------------------------------------------------------------------------------------------- step

    def step(self, x: Array, targets: Array, lr: float) -> Array:
        """One Adam step of every live model on inputs ``x`` and targets ``[K, N]``; returns the per-model
        mean losses (0 for failed models)."""
        outputs, inputs = self.forward(x)
        values, grad_output = self.losses(outputs, targets)
        self.backward(grad_output, inputs)
        self.check_gradients()
        self.adam(lr)
        self.steps += 1
        return values

    def losses(self, outputs: Array, targets: Array) -> tuple[Array, Array]:
        """Per-model mean loss ``[K]`` and the gradient of their sum with respect to ``outputs``."""
        values = np.zeros(self.n_models, dtype=np.float32)
        grad = np.zeros_like(outputs)
        n = outputs.shape[1]
        for group in self.groups:
            rows = slice(group.start, group.stop)
            if self.dead[rows].all():
                continue
            try:
                if group.kernel is not None:
                    value, derivative = group.kernel(outputs[rows], targets[rows], group.constants)
                    if group.summed:
                        values[rows], grad[rows] = value.sum(axis=1), derivative
                    else:
                        values[rows], grad[rows] = value.mean(axis=1), derivative * np.float32(1.0 / n)
                else:
                    values[rows], grad[rows] = _autograd_value_and_grad(group.loss, outputs[rows], targets[rows])
            except (RuntimeError, ValueError, ZeroDivisionError, OverflowError) as exc:
                for k in range(group.start, group.stop):
                    self.fail(k, f"loss raised {type(exc).__name__}: {exc}")
        values[self.dead] = 0.0
        grad[self.dead] = 0.0
        bad = ~np.isfinite(values)
        for k in np.flatnonzero(bad):
            self.fail(int(k), f"non-finite loss value at step {self.steps}")
            values[k] = 0.0
            grad[k] = 0.0
        return values, grad

    def check_gradients(self) -> None:
        """Fail models with non-finite or exploding gradients (or none at all), and zero failed models'."""
        norms = np.sqrt((self.grad.astype(np.float64) ** 2).sum(axis=1))
        bad = ~self.dead & (~np.isfinite(norms) | (norms > self.max_grad_norm) | ((norms == 0) & (self.steps == 0)))
        for k in np.flatnonzero(bad):
            norm = float(norms[k])
            if not math.isfinite(norm):
                self.fail(int(k), f"non-finite gradient at step {self.steps}")
            elif norm == 0.0:
                self.fail(int(k), "no gradient with respect to the model's output")
            else:
                self.fail(int(k), f"exploding gradient (norm {norm:.3g}) at step {self.steps}")
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
        if self.failures[k] is None:
            self.failures[k] = reason
            self.dead[k] = True

    # ------------------------------------------------------------------------------------------- loop

    def fit(
        self,
        x: torch.Tensor,
        targets: torch.Tensor,
        steps: int,
        lr_at: Callable[[int], float],
        record: bool = False,
        x_test: torch.Tensor | None = None,
        y_test: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Train for ``steps`` steps with learning rate ``lr_at(step)``, then write the weights back into the
        model. With ``record``, returns the per-step losses ``[steps, K]`` and, given a test set, the
        test RMSEs before each step; otherwise ``(None, None)``."""
        x_np = x.detach().numpy().astype(np.float32, copy=False)
        t_np = targets.detach().numpy().astype(np.float32, copy=False)
        train_loss, test_rmse = [], []
        recording_test = record and x_test is not None and y_test is not None
        if recording_test:
            x_test_np = x_test.detach().numpy().astype(np.float32, copy=False)
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
        return (
            torch.from_numpy(np.stack(train_loss)) if train_loss else None,
            torch.from_numpy(np.stack(test_rmse)) if test_rmse else None,
        )

    def write_back(self) -> None:
        """Copy the trained weights into the model's parameters."""
        with torch.no_grad():
            for layer, w, b in zip(self.model.layers, self.weights, self.biases):
                layer.weight.copy_(torch.from_numpy(np.ascontiguousarray(w)))
                layer.bias.copy_(torch.from_numpy(np.ascontiguousarray(b)))


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
        summed = isinstance(loss, SymbolicLoss) and loss.reduction == "sum"
        groups.append(_LossGroup(k, k + 1, loss, kernel, constants, summed))
    return groups


def _autograd_value_and_grad(loss: LossLike, outputs: Array, targets: Array) -> tuple[Array, Array]:
    """Mean loss and its gradient for models without a numpy kernel, one model at a time, through torch."""
    values, grads = np.zeros(len(outputs), dtype=np.float32), np.zeros_like(outputs)
    for i in range(len(outputs)):
        leaf = torch.from_numpy(outputs[i].copy()).requires_grad_()
        try:
            value = torch.as_tensor(loss(leaf, torch.from_numpy(targets[i].copy())))
        except (RuntimeError, ValueError, ZeroDivisionError, OverflowError):
            raise
        except Exception as exc:  # candidate losses are arbitrary code; the reason is kept
            raise RuntimeError(f"{type(exc).__name__}: {exc}") from exc
        value = value.mean() if value.dim() > 0 else value
        values[i] = float(value.detach())
        if value.requires_grad:
            (grad,) = torch.autograd.grad(value, leaf, allow_unused=True)
            if grad is not None:
                grads[i] = grad.numpy()
    return values, grads
