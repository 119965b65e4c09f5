"""Numerics across SymbolicLoss and the .py export: the same values and gradients in float32 and float64."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings, strategies as st

from lossforge.expression import LossExpression
from lossforge.loss import SymbolicLoss
from tests.conftest import exported_class

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")




_CONSTANTS = st.floats(min_value=-50.0, max_value=50.0, allow_nan=False, allow_infinity=False, width=64)


@settings(max_examples=15, deadline=None, derandomize=True)
@given(c0=_CONSTANTS, c1=_CONSTANTS)
def test_symbolic_loss_and_export_agree_in_float64_with_exact_constants(tmp_path_factory, c0: float, c1: float) -> None:
    # Before: SymbolicLoss kept its constants in a float32 buffer, so in float64 it computed with 0.1 read as
    # 0.10000000149 while the export's literals are the exact doubles (a difference of about 1e-8).
    expression = LossExpression(["plus", "multiply", c0, "multiply", "y_pred", "y_real",
                                 "multiply", "minus", "y_pred", c1, "minus", "y_pred", c1])
    exported = exported_class(tmp_path_factory.mktemp("x"), expression)
    p = torch.tensor([0.3, 1.7, -2.1, 1e-9], dtype=torch.float64)
    r = torch.tensor([1.0, -0.5, 2.0, 3.0], dtype=torch.float64)
    for dtype in (torch.float64, torch.float32):
        grads = []
        for module in (SymbolicLoss(expression, reduction="none"), exported(reduction="none")):
            x = p.to(dtype).clone().requires_grad_(True)
            value = module(x, r.to(dtype))
            value.sum().backward()
            grads.append((value.detach(), x.grad))
        (va, ga), (vb, gb) = grads
        assert torch.equal(va, vb), (dtype, va, vb)
        assert torch.equal(ga, gb), (dtype, ga, gb)


def test_float64_uses_constants_loaded_into_the_buffer() -> None:
    # the exact float64 constants stand in for the buffer's float32 roundings only: constants loaded since
    # (tuned ones, from a state dict) are what both precisions compute with
    loss = SymbolicLoss("0.1*(y_pred - y_real)**2", problem="regression", reduction="sum")
    x, y = torch.tensor([1.0, 2.0], dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    assert loss(x, y).item() == 0.1 * 5  # the exact double, not 0.10000000149 * 5
    loss.load_state_dict({"constants": torch.tensor([2.0])})
    assert loss(x, y).item() == 10.0 and loss(x.float(), y.float()).item() == 10.0
    assert loss.double()(x, y).item() == 10.0


def _ce_case(logits: list[list[float]], dtype: torch.dtype):
    x = torch.tensor(logits, dtype=dtype, requires_grad=True)
    return x, torch.zeros(len(logits), dtype=torch.long)


@pytest.mark.parametrize("text, offset", [
    ("-y_real*log(1.0*y_pred)", 0.0),  # cross-entropy's own key
    ("-y_real*log(y_pred*1.0000001)", math.log(1.0000001)),
    ("-y_real*log(0.5*y_pred)", math.log(0.5)),
    ("-y_real*log(y_pred + y_pred)", math.log(2.0)),  # sympy: log(2*y_pred)
    ("-y_real*log(-3.0*y_pred*y_pred)", None),  # log(3) + 2*log(y_pred)
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_of_a_scaled_probability_is_exact_at_extreme_logits(tmp_path: Path, text: str, offset, dtype) -> None:
    # Before: only log(y_pred) and log(y_pred**k) read log_softmax; log(1.0*y_pred), which has cross-entropy's
    # key, clamped at 1e-12 beyond a logit gap of ~27.6 (value 27.63, gradient 0) while cross-entropy is exact.
    expression = LossExpression.parse(text)
    logits = [[0.0, 40.0, -3.0], [0.0, 100.0, 2.0], [5.0, 0.0, 1.0]]
    x, target = _ce_case(logits, dtype)
    ce = torch.nn.functional.cross_entropy(x, target, reduction="none")
    power = 2.0 if offset is None else 1.0  # -y_real*log(c*y_pred**k) = k*CE - log|c|
    want = power * ce - (math.log(3.0) if offset is None else offset)
    (want_grad,) = torch.autograd.grad(want.sum(), x)
    exported = exported_class(tmp_path, expression)(reduction="none")
    for module in (SymbolicLoss(expression, reduction="none"), exported):
        x, target = _ce_case(logits, dtype)
        value = module(x, target)
        value.sum().backward()
        torch.testing.assert_close(value, want.detach())
        torch.testing.assert_close(x.grad, want_grad)
    if "1.0*" in text:
        assert expression.key == LossExpression.parse("-y_real*log(y_pred)").key  # one key, one function


def test_the_scaled_log_keeps_constants_in_order_and_its_constant_trainable() -> None:
    expression = LossExpression.parse("-y_real*log(0.5*y_pred) + 0.25*y_pred")
    assert expression.classification_program.constants == expression.program.constants
    loss = SymbolicLoss(expression, trainable_constants=True, problem="classification")
    loss(torch.tensor([[0.0, 100.0]]), torch.tensor([0])).backward()
    assert loss.constants.grad is not None and torch.isfinite(loss.constants.grad).all()
    assert loss.constants.grad.abs().sum() > 0


def test_the_scaled_log_export_compiles_with_jit_script(tmp_path: Path) -> None:
    expression = LossExpression.parse("-y_real*log(0.5*y_pred) + 0.25*y_pred")
    module = exported_class(tmp_path, expression)()
    scripted = torch.jit.script(module)
    x, target = torch.tensor([[0.0, 100.0], [1.0, -2.0]]), torch.tensor([0, 1])
    assert torch.equal(scripted(x, target), module(x, target))
    torch.testing.assert_close(module(x, target), SymbolicLoss(expression)(x, target))
