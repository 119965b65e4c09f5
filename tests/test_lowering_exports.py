"""LaTeX shows the protected operators' guards, and the sympy export is plain sympy with their values."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import sympy
import torch

from lossforge.backends.sympy_plain import plain_sympy
from lossforge.compile import compile_expr
from lossforge.export import render
from lossforge.expression import SYMBOLS, LossExpression
from lossforge.operators import OPERATORS, ProtectedDiv, ProtectedExp, ProtectedLog, ProtectedSqrt

POINTS = [0.0, 1e-13, -1e-13, 1e-9, -1e-9, 5e-7, -5e-7, 2e-6, 1e-3, -2.5, 0.7, 3.0, 29.0, 31.0, -40.0]


@pytest.mark.parametrize("text, fragments", [
    ("y_pred/y_pred", [r"\operatorname{sgn}_{+}\left(y_{pred}\right)", r"\max\left(\left|y_{pred}\right|, 10^{-6}\right)"]),
    ("sqrt(y_pred)", [r"\sqrt{\max\left(\left|y_{pred}\right|, 10^{-12}\right)}"]),
    ("log(y_real)", [r"\log{\max\left(\left|y_{real}\right|, 10^{-12}\right)}"]),
    ("exp(y_pred)", [r"e^{\min\left(y_{pred}, 30\right)}"]),
])
def test_latex_keeps_the_guards(text: str, fragments: list[str]) -> None:
    latex = LossExpression.parse(text).latex()
    for fragment in fragments:
        assert fragment in latex, latex
    assert render(LossExpression.parse(text), "latex").strip() == latex


def _plain_value(plain: sympy.Expr, p: float, r: float) -> float:
    return float(plain.subs({SYMBOLS["y_pred"]: sympy.Float(p), SYMBOLS["y_real"]: sympy.Float(r)}))


def _check_plain(text: str, pairs) -> None:
    expression = LossExpression.parse(text)
    plain = plain_sympy(expression.sympy)
    assert not plain.atoms(ProtectedDiv, ProtectedSqrt, ProtectedLog, ProtectedExp)
    fn = compile_expr(expression.sympy)
    p = torch.tensor([a for a, _ in pairs], dtype=torch.float64)
    r = torch.tensor([b for _, b in pairs], dtype=torch.float64)
    want = fn(p, r, torch.tensor(fn.constants, dtype=torch.float64)).tolist()
    for (a, b), w in zip(pairs, want):
        got = _plain_value(plain, a, b)
        assert math.isfinite(got) and got == pytest.approx(w, rel=1e-9, abs=1e-12), (text, a, b, got, w)


@pytest.mark.parametrize("name", list(OPERATORS))
def test_plain_sympy_of_every_operator_has_its_values_at_protected_points(name: str) -> None:
    op = OPERATORS[name]
    text = f"{name}(y_pred)" if op.arity == 1 else f"{name}(y_pred, y_real)"
    pairs = [(a, 1.0) for a in POINTS] if op.arity == 1 else list(itertools.product(POINTS, POINTS))
    _check_plain(text, pairs)


@pytest.mark.parametrize("text", ["div(log(y_pred), y_real) + 0.5*sqrt(y_pred)", "y_pred/y_pred - exp(y_real*40)",
                                  "sqrt(3.985*y_real/y_pred) + y_pred**3", "log(div(y_pred, y_pred - y_real))"])
def test_plain_sympy_of_expressions_at_random_and_protected_points(text: str) -> None:
    rng = np.random.default_rng(0)
    pairs = [tuple(v) for v in rng.normal(0, 2, (12, 2))] + [(0.0, 0.0), (1e-9, 0.0), (0.0, -1e-9), (2.0, 2.0)]
    _check_plain(text, pairs)


def test_the_sympy_export_is_plain_sympy() -> None:
    text = render(LossExpression.parse("y_pred/y_pred + sqrt(y_real)*log(exp(y_pred))"), "sympy")
    assert "Protected" not in text and "sign" in text and "Max" in text and "Min" in text


def test_plain_sympy_of_nested_denominators_stays_small_and_lambdifies() -> None:
    # a Piecewise guard was folded into nested conditions (~18x per level) that lambdify printed as
    # numpy.select calls numpy refuses; each guard now names its argument twice
    text = "y_pred"
    for i in range(4):
        text = f"div(y_real, {text} + {i + 1}.5)"
    expression = LossExpression.parse(text)
    plain = plain_sympy(expression.sympy)
    nodes = lambda e: sum(1 for _ in sympy.preorder_traversal(e))  # noqa: E731
    assert nodes(plain) <= 2 ** 4 * nodes(expression.sympy)
    fn = compile_expr(expression.sympy)
    rng = np.random.default_rng(1)
    p = np.concatenate([rng.normal(0, 2, 40), [0.0, 1e-9, -1e-9, -1.5, -2.5]])
    r = np.concatenate([rng.normal(0, 2, 40), [0.0, 0.0, 1e-9, 1.0, -1.0]])
    numeric = sympy.lambdify([SYMBOLS["y_pred"], SYMBOLS["y_real"]], plain, "numpy")
    with np.errstate(all="ignore"):
        got = np.broadcast_to(numeric(p, r), p.shape)
    want = fn(torch.tensor(p), torch.tensor(r), torch.tensor(fn.constants, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
