"""Loss diagnostics agree with what theory says of the known losses."""

from __future__ import annotations

from pathlib import Path

import pytest

from lossforge.diagnostics import curves, diagnose, plot_curves


@pytest.mark.parametrize(
    "expression, problem, bounded, symmetric, monotone",
    [
        ("-y_real*log(y_pred)", "classification", False, False, True),  # cross-entropy
        ("sqrt((y_pred - y_real)**2)", "classification", True, True, True),  # MAE: symmetric (Ghosh 2017)
        ("y_real*(1 - exp(0.7*log(y_pred)))/0.7", "classification", True, False, True),  # GCE
        ("(1 - y_real)*y_pred", "classification", True, True, True),  # RCE-like: symmetric
        ("y_real*(y_pred - 0.5)**2", "classification", True, False, False),  # penalises confidence
        ("(y_pred - y_real)**2", "regression", False, True, True),
        ("1 - exp(-(y_pred - y_real)**2)", "regression", True, True, True),  # Welsch: redescending
        ("(y_pred - y_real)**2 + 0.5*(y_pred - y_real)", "regression", False, False, False),  # tilted
    ],
)
def test_properties(expression: str, problem: str, bounded: bool, symmetric: bool, monotone: bool) -> None:
    d = diagnose(expression, problem)
    assert (d.bounded, d.symmetric, d.monotone) == (bounded, symmetric, monotone)


def test_curves_and_plot(tmp_path: Path) -> None:
    x, v, g = curves("(y_pred - y_real)**2", "regression")
    assert x.shape == v.shape == g.shape
    assert float(g[x > 1][0]) > 0 > float(g[x < -1][-1])  # gradient of r² is 2r
    out = plot_curves([("mse", "(y_pred - y_real)**2"), ("mae", "sqrt((y_pred - y_real)**2)")], "regression",
                      tmp_path / "c.png")
    assert out.exists() and out.stat().st_size > 1000


def test_plot_curves_refuses_a_name_that_is_not_png(tmp_path) -> None:
    from lossforge.errors import ExportError

    out = tmp_path / "curves.svg"
    with pytest.raises(ExportError, match=r"PNG.*\.png.*curves\.svg"):
        plot_curves([("mse", "(y_pred - y_real)**2")], "regression", out)
    assert not out.exists()
    png = plot_curves([("mse", "(y_pred - y_real)**2")], "regression", tmp_path / "curves.PNG")
    assert png.read_bytes().startswith(b"\x89PNG")
