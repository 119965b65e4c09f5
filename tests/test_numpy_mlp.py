"""The numpy training engine against the autograd reference: loss kernels, single steps, whole runs, failures.

The numpy engine (``lossforge.numpy_mlp`` with the kernels of ``lossforge.compile.compile_value_and_grad``)
must follow ``lossforge.training.BatchedTrainer`` exactly in its rules (failure reasons, frozen models) and to
float32 rounding in its numbers. Chaotic losses can amplify that rounding over hundreds of steps, so whole
runs are compared only for well-behaved losses.
"""

from __future__ import annotations

import random
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lossforge import gp, numpy_mlp
from lossforge.compile import compile_expr, compile_value_and_grad
from lossforge.errors import ConfigError
from lossforge.expression import LossExpression
from lossforge.loss import SymbolicLoss
from lossforge.models import BatchedMLP
from lossforge.numpy_mlp import NumpyMLPTrainer
from lossforge.operators import OPERATORS
from lossforge.rejection import rejection_reason
from lossforge.space import load_space
from lossforge.tasks.base import guarded_loss
from lossforge.tasks.regression import RegressionTask, predict
from lossforge.training import BatchedTrainer

torch.set_num_threads(1)

MSE = "(y_pred - y_real)**2"
MAE = "sqrt((y_pred - y_real)**2)"


def sym(text, reduction: str = "none", **kwargs) -> SymbolicLoss:
    return SymbolicLoss(text, reduction=reduction, problem="regression", **kwargs)


def scores(task_kwargs: dict, losses: list, engine: str, preset: str = "gaussian", seed: int = 0):
    """``evaluate`` results of a preset task with the given settings and engine."""
    return RegressionTask.from_preset(preset, engine=engine, **task_kwargs).evaluate(losses, seed)


# --- 1. loss kernels against the torch forms and autograd ----------------------------------------------------

KERNEL_EXPRESSIONS = [
    MSE,
    MAE,
    "sqrt(y_pred - y_real)",  # negative arguments and the clamp at 0
    "divide(y_pred, y_real)",  # gradient through the numerator only
    "divide(y_real, y_pred)",  # through a denominator that can be clamped
    "divide(exp(y_pred), y_pred + y_real)",  # through both
    "divide(1.5, y_pred - y_real)",
    "divide(y_pred, 2.0)",  # a constant denominator (becomes a product)
    "divide(sin(y_pred), y_pred) * log(y_pred)**2",
    "log(y_pred)",
    "log((y_pred - y_real)**2 + 1)",
    "log(y_pred * y_real) - log(y_real)",
    "exp(y_pred - y_real)",  # the clamp at 30
    "exp(10 * y_pred) * y_real",
    "exp(-y_pred)**2",
    "sin(y_pred) * cos(y_real)",
    "cos(y_pred - y_real)**3",
    "sin(exp(-y_pred**2) - y_real)",
    "y_pred**4 - 2.5 * y_real * y_pred + 0.3",
    "exp(-y_real) * (y_pred - y_real)**2",  # a subexpression of y_real only
    "sqrt(y_real) * log(y_real) + y_pred",
    "y_pred",
    "-y_pred",
    "sin(y_real)**2 + 0.7",  # does not depend on y_pred
    "0.5",  # a constant
]

_EPS_F32 = np.float32(1e-6)
#: Values at the operators' edges: exact 0, below and above the sqrt/log clamp (1e-12), around the divide
#: epsilon (1e-6, including the float32 neighbours of the threshold), around exp's clamp (30), negatives.
EDGES = np.array(
    [0.0, 1e-13, -1e-13, 1e-12, 2e-12, 5e-7, -5e-7, _EPS_F32, np.nextafter(_EPS_F32, np.float32(0)), -_EPS_F32,
     2e-6, 0.5, -0.5, 1.0, -1.0, 3.0, -3.0, 30.0, 31.0, -31.0, 35.0],
    dtype=np.float32,
)


def edge_inputs() -> tuple[np.ndarray, np.ndarray]:
    """Every pair of edge values, plus predictions a tiny distance from the target (differences near 0 and
    near the divide epsilon)."""
    p, r = (a.ravel() for a in np.meshgrid(EDGES, EDGES))
    base = np.repeat(np.array([1.0, -3.0, 0.5, 30.0], dtype=np.float32), 7)
    offsets = np.tile(np.array([0.0, 1e-13, -1e-13, 5e-7, -5e-7, 2e-6, -2e-6], dtype=np.float32), 4)
    return np.concatenate([p, base + offsets]), np.concatenate([r, base])


def random_inputs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(257) * 2).astype(np.float32), (rng.standard_normal(257) * 2).astype(np.float32)


def torch_value_and_grad(expr, p: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The compiled torch form's value and autograd's derivative along y_pred (zeros when there is none)."""
    leaf = torch.from_numpy(p.copy()).requires_grad_()
    value = compile_expr(expr)(leaf, torch.from_numpy(r.copy()))
    if not value.requires_grad:
        return value.detach().numpy(), np.zeros_like(p)
    (grad,) = torch.autograd.grad(value.sum(), leaf, allow_unused=True)
    return value.detach().numpy(), np.zeros_like(p) if grad is None else grad.numpy()


#: Compared on random inputs only: the derivative of a quotient whose numerator and denominator both follow
#: y_pred is a difference of terms of size 1/b that cancel where a ~ b (e.g. y_pred = 1e-6, y_real = 1e-13
#: here: terms of 1e6, a result of 0.2), so float32 rounds torch's a'/b - a b'/b**2 and the kernel's
#: (a' - (a/b) b')/b to results that differ by about 1e6 * 2**-24.
RANDOM_ONLY = ["divide(y_pred - y_real, y_pred + y_real)"]


def test_kernel_expressions_use_every_operator() -> None:
    """The kernel comparisons below cover every row of the operator table (a new row must be added there)."""
    used = {t for text in KERNEL_EXPRESSIONS for t in LossExpression.parse(text).tokens if isinstance(t, str)}
    assert set(OPERATORS) <= used


@pytest.mark.parametrize("text, inputs", [(t, i) for t in KERNEL_EXPRESSIONS for i in ("random", "edges")]
                         + [(t, "random") for t in RANDOM_ONLY])
def test_kernel_matches_torch_value_and_autograd(text: str, inputs: str) -> None:
    """The numpy kernel gives the torch form's values and the gradient autograd takes through it, including
    where a clamp or the protected divide cuts the gradient, and keeps float32."""
    expr = LossExpression.parse(text).sympy
    p, r = random_inputs() if inputs == "random" else edge_inputs()
    value, derivative = compile_value_and_grad(expr)(p, r)
    ref_value, ref_derivative = torch_value_and_grad(expr, p, r)
    assert value.dtype == np.float32 and derivative.dtype == np.float32
    assert value.shape == p.shape and derivative.shape == p.shape
    np.testing.assert_allclose(value, ref_value, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(derivative, ref_derivative, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("text", ["sin(y_real)**2 + 0.7", "0.5", "log(y_real) * exp(y_real)"])
def test_kernel_of_a_loss_without_y_pred_has_zero_derivative(text: str) -> None:
    """A loss that does not depend on y_pred gets an all-zero derivative (the trainer then fails the model)."""
    p, r = random_inputs(1)
    _, derivative = compile_value_and_grad(LossExpression.parse(text).sympy)(p, r)
    assert derivative.shape == p.shape
    assert not derivative.any()


def test_kernel_uses_given_constants() -> None:
    """Constants passed to the kernel replace the compiled ones, in the order compile_expr keeps them."""
    expr = LossExpression.parse("0.3 * (y_pred - y_real)**2 + 1.7 * y_pred").sympy
    p, r = random_inputs(2)
    kernel = compile_value_and_grad(expr)
    assert kernel.constants == compile_expr(expr).constants
    new = tuple(c * 2 for c in kernel.constants)
    value, derivative = kernel(p, r, new)
    leaf = torch.from_numpy(p.copy()).requires_grad_()
    ref = compile_expr(expr)(leaf, torch.from_numpy(r), torch.tensor(new, dtype=torch.float32))
    (grad,) = torch.autograd.grad(ref.sum(), leaf)
    np.testing.assert_allclose(value, ref.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(derivative, grad.numpy(), rtol=1e-5, atol=1e-6)


# --- 2. single steps: gradients, updates and failures ---------------------------------------------------------


@pytest.fixture(scope="module")
def drawn_candidates() -> list[list]:
    """16 distinct GP trees of the survey space that pass early rejection (as scripts/bench.py draws them)."""
    toolbox, _ = gp.toolbox_for(load_space("survey"))
    state = random.getstate()
    random.seed(20240917)
    try:
        out, seen = [], set()
        while len(out) < 16:
            expr = gp.expression_of(toolbox.individual())
            if expr.key not in seen:
                seen.add(expr.key)
                if rejection_reason(expr, {"regression"}) is None:
                    out.append(list(expr.tokens))
    finally:
        random.setstate(state)
    return out


def well_conditioned_losses() -> list:
    """Hand-written losses covering the trainer's special cases: a loss object shared by consecutive models,
    'sum' and 'mean' reductions, trainable constants and plain callables (both without a kernel, one of
    them returning a single number)."""
    shared = sym(MSE)
    return [
        shared, shared,
        sym(MSE, reduction="sum"),
        sym(MAE, reduction="mean"),
        sym("sqrt(1 + (y_pred - y_real)**2) - 1"),
        sym("0.3 * (y_pred - y_real)**2", trainable_constants=True),
        lambda p, t: F.smooth_l1_loss(p, t, reduction="none"),
        lambda p, t: F.mse_loss(p, t),  # one number (the mean), not one per sample
    ]


#: Losses that fail at the first step, for a reason that does not depend on rounding.
FAILING_AT_STEP_0 = {
    "y_real**2": "no gradient with respect to the model's output",
    "1e6 * exp(y_pred + 3)": "exploding gradient",  # a gradient of 2e7 * mean(exp(y_pred)) at the output bias
    "exp(y_pred**2 + 30)**3": "non-finite loss value at step 0",  # at least exp(90): inf in float32
}


def flat(model: torch.nn.Module, grads: bool = False) -> np.ndarray:
    """Model parameters (or their gradients) as ``[K, P]``, in parameter order (weight, bias per layer)."""
    params = list(model.parameters())
    k = len(params[0])
    return torch.cat([(p.grad if grads else p).detach().reshape(k, -1) for p in params], dim=1).numpy()


def step_inputs(task: RegressionTask, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``[K, N, 1]`` and targets ``[K, N]``: the noisy and purified data alternately."""
    data = task.make_data(0)
    x = torch.stack([data.x_noisy, data.x_purified]).repeat(k, 1, 1)[:k].contiguous()
    y = torch.stack([data.y_noisy, data.y_purified]).repeat(k, 1)[:k].contiguous()
    return x, y


def run_both(task: RegressionTask, losses: list, steps: int):
    """Yield, after each of ``steps`` steps on the same data and initial weights, the autograd trainer and
    its model's values, and the numpy trainer, its model (written back) and values."""
    k = len(losses)
    x, y = step_inputs(task, k)
    reference, model = task.build_model(k, 0), task.build_model(k, 0)
    optimizer = torch.optim.Adam(reference.parameters(), lr=task.lr, foreach=True)
    trainer = BatchedTrainer(reference, [guarded_loss(loss) for loss in losses], optimizer)
    fast = NumpyMLPTrainer(model, losses, task.activation)
    x_np = fast.augmented_inputs(x.numpy())
    for _ in range(steps):
        ref_values = trainer.step(reference(x).squeeze(-1), list(y.unbind(0))).numpy()
        with np.errstate(all="ignore"):
            values = fast.step(x_np, y.numpy(), task.lr)
        fast.write_back()
        yield trainer, reference, ref_values, fast, model, values


def rounding_sensitivity(task: RegressionTask, losses: list) -> np.ndarray:
    """How far each model's first autograd gradient moves (relative to its largest element) when the outputs
    move by a few float32 roundings: the two engines round the outputs differently, and a loss such as
    ``cos(div(y_real, y_pred))`` near ``y_pred = 0`` amplifies that, so it bounds how closely they can agree."""
    k = len(losses)
    x, y = step_inputs(task, k)
    gen = torch.Generator().manual_seed(0)
    grads = []
    for perturbed in (False, True, True):
        model = task.build_model(k, 0)
        out = model(x).squeeze(-1)
        if perturbed:  # about 4 ulp of the output or of its typical size, whichever is larger, random signs
            size = out.detach().abs()
            sign = torch.randint(0, 2, out.shape, generator=gen) * 2 - 1
            out = out + 2.0**-21 * (size + size.mean(dim=1, keepdim=True)) * sign
        sum(guarded_loss(loss)(out[j], y[j]).mean() for j, loss in enumerate(losses)).backward()
        grads.append(flat(model, grads=True))
    with np.errstate(all="ignore"):
        change = np.max([np.abs(g - grads[0]).max(axis=1) for g in grads[1:]], axis=0)
        return np.nan_to_num(change / np.abs(grads[0]).max(axis=1), nan=0.0, posinf=0.0)


def _kind(reason: str | None) -> str | None:
    """A failure reason without the gradient norm it may carry: 'exploding gradient (norm 2.25e+07) at step
    0' -> 'exploding gradient at step 0'."""
    return None if reason is None else re.sub(r" \(norm [^)]*\)", "", reason)


def _norm(reason: str | None) -> float | None:
    found = re.search(r"\(norm ([^)]*)\)", reason or "")
    return float(found.group(1)) if found else None


NETWORKS = [(1, "tanh"), (2, "tanh"), (1, "relu"), (2, "relu")]


@pytest.mark.parametrize("layers, activation", NETWORKS)
def test_first_step_matches_the_autograd_trainer(drawn_candidates, layers: int, activation: str) -> None:
    """On drawn candidates and special cases, the first step's flat gradient equals the autograd trainer's
    parameter gradients (to 1e-5, widened by each loss's own sensitivity to output rounding), the updated
    parameters and loss values agree, and the same models fail for the same reasons."""
    task = RegressionTask.from_preset("biased_targets", layers=layers, activation=activation, n_train=64)
    losses = [sym(t) for t in drawn_candidates] + well_conditioned_losses() + [sym(s) for s in FAILING_AT_STEP_0]
    tolerance = 1e-5 + 4 * rounding_sensitivity(task, losses)
    trainer, reference, ref_values, fast, model, values = next(run_both(task, losses, 1))
    # the same reasons; a norm in a reason agrees as far as the loss's own rounding sensitivity allows
    # (cos(div(y_real, y_pred)) near y_pred = 0 reports 2.3e7 or 3.6e7 depending on the CPU's kernels)
    assert [_kind(r) for r in fast.failures] == [_kind(r) for r in trainer.failures]
    for ours, theirs, tol in zip(fast.failures, trainer.failures, tolerance):
        if _norm(theirs) is not None:
            assert abs(_norm(ours) - _norm(theirs)) <= tol * _norm(theirs) + 0.01 * _norm(theirs), (ours, theirs)
    for reason, expected in zip(fast.failures[-len(FAILING_AT_STEP_0):], FAILING_AT_STEP_0.values()):
        assert reason == expected or (reason.startswith(expected + " (norm ") and reason.endswith(") at step 0"))
    ref_grad = flat(reference, grads=True)
    assert (np.abs(fast.grad - ref_grad) <= tolerance[:, None] * np.abs(ref_grad).max(axis=1, keepdims=True)).all()
    np.testing.assert_allclose(flat(model), flat(reference), rtol=1e-5, atol=1e-6)
    assert (np.abs(values - ref_values) <= tolerance * np.abs(ref_values) + 1e-7).all()
    assert values[-1] == ref_values[-1] == 0  # a non-finite loss value is reported as 0


@pytest.mark.parametrize("layers, activation", NETWORKS)
def test_adam_steps_of_well_conditioned_losses_match(layers: int, activation: str) -> None:
    """Over several steps (Adam's moments and bias correction at work) the gradients and parameters of
    well-conditioned losses stay equal to the autograd trainer's to float32 rounding."""
    task = RegressionTask.from_preset("biased_targets", layers=layers, activation=activation, n_train=64)
    losses = well_conditioned_losses()
    for trainer, reference, ref_values, fast, model, values in run_both(task, losses, 5):
        assert fast.failures == trainer.failures == [None] * len(losses)
        ref_grad = flat(reference, grads=True)
        assert (np.abs(fast.grad - ref_grad) <= 1e-5 * np.abs(ref_grad).max(axis=1, keepdims=True)).all()
        np.testing.assert_allclose(flat(model), flat(reference), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(values, ref_values, rtol=1e-5)


def test_sum_reduction_without_a_kernel_matches_the_autograd_trainer() -> None:
    """A 'sum' loss whose constants are trainable (so it trains through the autograd fallback) has the
    value and gradient the autograd trainer gives it."""
    task = RegressionTask.from_preset("biased_targets", n_train=64)
    losses = [sym("0.3 * (y_pred - y_real)**2", reduction="sum", trainable_constants=True)]
    _, reference, ref_values, fast, _, values = next(run_both(task, losses, 1))
    np.testing.assert_allclose(values, ref_values, rtol=1e-5)
    np.testing.assert_allclose(fast.grad, flat(reference, grads=True), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("loss", [sym("exp(y_pred + 30) * y_pred * 1e6"), lambda p, t: 1e25 * p],
                         ids=["symbolic", "callable"])
def test_finite_gradient_too_large_to_square_in_float32_fails_alike(loss) -> None:
    """A loss whose gradients are finite but whose squared norm overflows float32 fails with the same reason
    in both engines."""
    fast = scores({"steps": 2, "n_train": 64}, [loss], "numpy")[0]
    reference = scores({"steps": 2, "n_train": 64}, [loss], "autograd")[0]
    assert fast.reason == reference.reason
    assert fast.status == reference.status == "failed"
    assert reference.reason == "non-finite gradient at step 0"


# --- 3. whole runs of well-behaved losses ---------------------------------------------------------------------

SMOOTH = [MSE, MAE, "log(exp(y_pred - y_real) + exp(y_real - y_pred))", "sqrt(1 + (y_pred - y_real)**2) - 1"]


@pytest.mark.parametrize("preset", ["gaussian", "biased_targets"])
def test_whole_runs_of_smooth_losses_agree_between_engines(preset: str) -> None:
    """MSE, MAE, log-cosh and pseudo-Huber trained for 200 steps score the same with both engines."""
    losses = [sym(s) for s in SMOOTH]
    fast = scores({"steps": 200}, losses, "numpy", preset)
    reference = scores({"steps": 200}, losses, "autograd", preset)
    for a, b in zip(fast, reference):
        assert a.status == b.status == "complete"
        assert a.score == pytest.approx(b.score, rel=1e-4)
        assert a.metrics == pytest.approx(b.metrics, rel=1e-4)


# --- 4. failure reasons ---------------------------------------------------------------------------------------


def nan_loss(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return (p - t) * float("nan")


def raising_loss(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return {}["missing"]


def test_failure_reasons_are_identical_between_engines() -> None:
    """Every way a loss fails gives the same reason, at the same step, with both engines; the good losses
    batched with the failing ones still complete."""
    losses = [
        sym("y_real**2"),  # does not depend on y_pred
        sym("0.5"),
        sym("exp(y_pred**2 + 30)**3"),  # overflows float32 at the first step
        sym("-(y_pred**6)"),  # drives the outputs up until the gradient explodes (a later step)
        sym("-exp(y_pred)**2"),
        nan_loss,
        raising_loss,
        sym(MSE),
    ]
    fast = scores({"steps": 60, "n_train": 64}, losses, "numpy")
    reference = scores({"steps": 60, "n_train": 64}, losses, "autograd")
    assert [r.reason for r in fast] == [r.reason for r in reference]
    assert [r.status for r in fast] == [r.status for r in reference]
    reasons = [r.reason for r in fast]
    assert reasons[0] == reasons[1] == "no gradient with respect to the model's output"
    assert reasons[2] == "non-finite loss value at step 0"
    for reason in reasons[3:5]:
        assert reason.startswith("exploding gradient (norm ") and not reason.endswith("at step 0")
    assert reasons[5] == "non-finite loss value at step 0"
    assert reasons[6] == "loss raised RuntimeError: KeyError: 'missing'"
    assert reasons[7] is None and fast[7].score == pytest.approx(reference[7].score, rel=1e-4)


# --- 5. callables without an expression ---------------------------------------------------------------------


def test_callable_loss_trains_through_the_fallback() -> None:
    """A loss without a symbolic expression trains through autograd inside the numpy trainer and scores as
    with the autograd engine."""
    loss = lambda p, t: F.smooth_l1_loss(p, t, reduction="none")
    fast = scores({"steps": 200}, [loss], "numpy", "biased_targets")[0]
    reference = scores({"steps": 200}, [loss], "autograd", "biased_targets")[0]
    assert fast.status == reference.status == "complete"
    assert fast.score == pytest.approx(reference.score, rel=1e-4)
    assert fast.metrics == pytest.approx(reference.metrics, rel=1e-4)


# --- 6. batch independence ------------------------------------------------------------------------------------

OTHERS = [MSE, "-(y_pred**6)", "exp(y_pred**2 + 30)**3", "y_real**2", nan_loss]


@pytest.mark.parametrize("layers", [1, 2])
def test_numpy_engine_score_alone_equals_score_in_a_batch(layers: int) -> None:
    """With purification changing the data, a loss scores bit-identically alone and in a batch with others
    (some of them failing), in the elementwise (1 hidden layer) and matmul (2) paths."""
    task = RegressionTask.from_preset("biased_targets", steps=150, layers=layers, n_train=128)
    assert task.make_data(3).purification_changes
    mae = sym(MAE)
    alone = task.evaluate([mae], seed=3)[0]
    batch = task.evaluate([sym(s) if isinstance(s, str) else s for s in OTHERS[:2]] + [mae]
                          + [sym(s) if isinstance(s, str) else s for s in OTHERS[2:]], seed=3)
    assert alone.status == "complete"
    assert batch[2].score == alone.score  # bit-identical, not merely close
    assert batch[2].metrics == alone.metrics


def test_shared_loss_object_trains_as_separate_equal_objects() -> None:
    """One loss object shared by consecutive models (evaluated once for both) trains them exactly as two
    equal objects would, and as each model trained alone."""
    task = RegressionTask.from_preset("biased_targets", steps=100, n_train=128)
    data = task.make_data(1)
    inputs = torch.stack([data.x_noisy, data.x_purified])
    targets = torch.stack([data.y_noisy, data.y_purified])
    loss = sym("log(exp(y_pred - y_real) + exp(y_real - y_pred))")
    shared = task.fit([loss, loss], inputs, targets, seed=1)
    separate = task.fit([loss, sym("log(exp(y_pred - y_real) + exp(y_real - y_pred))")], inputs, targets, seed=1)
    alone = [task.fit([loss], inputs[i : i + 1], targets[i : i + 1], seed=1) for i in range(2)]
    pred = predict(shared.model, data.x_test)
    assert not torch.equal(pred[0], pred[1])  # the two runs saw different data
    assert torch.equal(pred, predict(separate.model, data.x_test))
    assert torch.equal(pred, torch.cat([predict(a.model, data.x_test) for a in alone]))
    assert shared.failures == separate.failures == [None, None]


# --- 7. the engine setting -------------------------------------------------------------------------------------


def test_unknown_engine_is_a_one_line_config_error() -> None:
    """An unknown engine is refused with one line that names the setting and the allowed values."""
    with pytest.raises(ConfigError) as info:
        RegressionTask(engine="fast")
    message = str(info.value)
    assert "\n" not in message
    assert "engine" in message and "'fast'" in message
    assert "'numpy'" in message and "'autograd'" in message


def test_supports_only_cpu_float32_tanh_or_relu_without_dropout() -> None:
    """The numpy trainer takes CPU float32 MLPs with one output, tanh or relu and no dropout; everything else
    goes to the autograd trainer."""
    gen = lambda: torch.Generator().manual_seed(0)
    assert numpy_mlp.supports(BatchedMLP(2, [1, 8, 1], gen(), "tanh"), "tanh", "cpu")
    assert numpy_mlp.supports(BatchedMLP(2, [1, 8, 8, 1], gen(), "relu"), "relu", torch.device("cpu"))
    assert not numpy_mlp.supports(BatchedMLP(2, [1, 8, 1], gen(), "gelu"), "gelu", "cpu")
    assert not numpy_mlp.supports(BatchedMLP(2, [1, 8, 1], gen(), "tanh", dropout=0.1), "tanh", "cpu")
    assert not numpy_mlp.supports(BatchedMLP(2, [1, 8, 1], gen(), "tanh").double(), "tanh", "cpu")
    assert not numpy_mlp.supports(BatchedMLP(2, [1, 8, 1], gen(), "tanh"), "tanh", "cuda")
    assert not numpy_mlp.supports(BatchedMLP(2, [1, 8, 3], gen(), "tanh"), "tanh", "cpu")  # one output only
    with pytest.raises(ValueError, match="gelu"):
        NumpyMLPTrainer(BatchedMLP(1, [1, 8, 1], gen(), "gelu"), [sym(MSE)], "gelu")


def test_gelu_with_the_default_engine_falls_back_to_autograd() -> None:
    """A gelu task with the default engine trains, exactly as with the autograd engine."""
    settings = {"activation": "gelu", "steps": 40, "n_train": 64}
    default = RegressionTask.from_preset("gaussian", **settings)
    assert default.engine == "numpy"
    losses = [sym(MSE), sym(MAE)]
    fast = default.evaluate(losses, seed=0)
    reference = scores(settings, losses, "autograd")
    assert all(r.status == "complete" for r in fast)
    assert [r.score for r in fast] == [r.score for r in reference]


# --- 8. recorded histories -------------------------------------------------------------------------------------


def test_recorded_history_matches_the_autograd_engine() -> None:
    """``fit(record=True)`` with the numpy engine returns per-step training losses and test RMSEs of shape
    [steps, K] that follow the autograd engine's."""
    steps = 50
    histories = {}
    for engine in ("numpy", "autograd"):
        task = RegressionTask.from_preset("gaussian", engine=engine, steps=steps, n_train=64)
        data = task.make_data(0)
        inputs = data.x_noisy.expand(2, -1, -1)
        targets = data.y_noisy.expand(2, -1)
        fitted = task.fit([sym(MSE), sym(MAE)], inputs, targets, seed=0, record=True,
                          x_test=data.x_test, y_test=data.y_test)
        assert fitted.train_loss.shape == (steps, 2) and fitted.test_rmse.shape == (steps, 2)
        assert torch.isfinite(fitted.train_loss).all() and torch.isfinite(fitted.test_rmse).all()
        histories[engine] = fitted
        unrecorded = task.fit([sym(MSE)], inputs[:1], targets[:1], seed=0)
        assert unrecorded.train_loss is None and unrecorded.test_rmse is None
    fast, reference = histories["numpy"], histories["autograd"]
    assert fast.train_loss[-1, 0] < 0.5 * fast.train_loss[0, 0]  # it did train
    np.testing.assert_allclose(fast.train_loss.numpy(), reference.train_loss.numpy(), rtol=1e-4)
    np.testing.assert_allclose(fast.test_rmse.numpy(), reference.test_rmse.numpy(), rtol=1e-4)
    # the first step's loss and the RMSE before it come from the same initial weights
    np.testing.assert_allclose(fast.train_loss[0].numpy(), reference.train_loss[0].numpy(), rtol=1e-6)
    np.testing.assert_allclose(fast.test_rmse[0].numpy(), reference.test_rmse[0].numpy(), rtol=1e-6)
