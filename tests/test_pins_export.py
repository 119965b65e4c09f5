"""The exported PyTorch module computes exactly what the search scored, constants to the last digit."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from lossforge.export import render
from lossforge.expression import LossExpression
from lossforge.loss import SymbolicLoss


def test_exported_module_keeps_every_digit_of_the_constants(tmp_path: Path) -> None:
    expr = LossExpression.parse("0.123456789*(y_pred - y_real)**2 + divide(y_pred, 1.23456789 + y_real**2)")
    path = tmp_path / "exact_loss.py"
    path.write_text(render(expr, "py", name="Exact"))
    spec = importlib.util.spec_from_file_location("exact_loss", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    exported = module.Exact(reduction="none")
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, generator=gen, dtype=torch.float64), torch.randn(64, generator=gen, dtype=torch.float64)
    expected = 0.123456789 * (x - y) ** 2 + x / (1.23456789 + y**2)
    torch.testing.assert_close(exported(x, y), expected, rtol=1e-12, atol=0)
    # the search's loss holds its constants in float32: equal to float32 rounding
    torch.testing.assert_close(SymbolicLoss(expr, reduction="none")(x, y), expected, rtol=1e-6, atol=0)
    assert render(expr, "latex") == expr.latex() + "\n" and "\\frac" in render(expr, "latex")
