"""Numerics across SymbolicLoss and the .py export: the same values and gradients in float32 and float64."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from hypothesis import given, settings, strategies as st

from lossforge.export import to_python
from lossforge.expression import LossExpression
from lossforge.loss import SymbolicLoss


def _exported(tmp_path: Path, expression: LossExpression) -> type:
    path = tmp_path / f"loss_{expression.key}.py"
    path.write_text(to_python(expression, name="Exported"))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Exported


_CONSTANTS = st.floats(min_value=-50.0, max_value=50.0, allow_nan=False, allow_infinity=False, width=64)


@settings(max_examples=15, deadline=None, derandomize=True)
@given(c0=_CONSTANTS, c1=_CONSTANTS)
def test_symbolic_loss_and_export_agree_in_float64_with_exact_constants(tmp_path_factory, c0: float, c1: float) -> None:
    # Before: SymbolicLoss kept its constants in a float32 buffer, so in float64 it computed with 0.1 read as
    # 0.10000000149 while the export's literals are the exact doubles (a difference of about 1e-8).
    expression = LossExpression(["plus", "multiply", c0, "multiply", "y_pred", "y_real",
                                 "multiply", "minus", "y_pred", c1, "minus", "y_pred", c1])
    exported = _exported(tmp_path_factory.mktemp("x"), expression)
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
