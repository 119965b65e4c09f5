"""Operator table, parser, canonical forms, compiler and the SymbolicLoss module."""

from __future__ import annotations

import math

import pytest
import sympy
import torch

from lossforge.compile import compile_expr
from lossforge.errors import ExpressionError
from lossforge.expression import SYMBOLS, LossExpression, parse
from lossforge.loss import SymbolicLoss
from lossforge.operators import DIV_EPS, EXP_MAX, OPERATORS

# Values that hit every protected branch: zero, tiny of both signs, negatives, large.
POINTS = [0.0, 1e-9, -1e-9, 5e-7, -5e-7, 1e-3, -2.5, 0.7, 3.0, 40.0, -40.0]


def _sympy_value(op_name: str, *args: float) -> float:
    op = OPERATORS[op_name]
    syms = [sympy.Symbol(f"a{i}", real=True) for i in range(op.arity)]
    expr = op.sympy_form(*syms)
    return float(expr.subs(dict(zip(syms, [sympy.Float(a) for a in args]))))


@pytest.mark.parametrize("name", list(OPERATORS))
def test_every_operator_sympy_and_torch_agree_including_protected_points(name: str) -> None:
    op = OPERATORS[name]
    pairs = [(a,) for a in POINTS] if op.arity == 1 else [(a, b) for a in POINTS for b in POINTS]
    for args in pairs:
        expected = _sympy_value(name, *args)
        got = op.torch_form(*[torch.tensor(a, dtype=torch.float64) for a in args]).item()
        assert math.isfinite(got), (name, args)
        assert got == pytest.approx(expected, rel=1e-9, abs=1e-12), (name, args)


def test_protected_semantics_values() -> None:
    t = torch.tensor
    assert OPERATORS["divide"].torch_form(t(1.0), t(0.0)).item() == pytest.approx(1 / DIV_EPS)
    assert OPERATORS["divide"].torch_form(t(1.0), t(-1e-9)).item() == pytest.approx(-1 / DIV_EPS)
    assert OPERATORS["sqrt"].torch_form(t(-4.0)).item() == pytest.approx(2.0)
    assert OPERATORS["log"].torch_form(t(-math.e)).item() == pytest.approx(1.0)
    assert math.isfinite(OPERATORS["log"].torch_form(t(0.0)).item())
    assert OPERATORS["exp"].torch_form(t(1000.0)).item() == pytest.approx(math.exp(EXP_MAX), rel=1e-6)


def test_protected_gradients_are_finite_at_zero() -> None:
    x = torch.zeros(3, requires_grad=True)
    y = torch.tensor([0.0, 1.0, -1.0])
    total = sum(OPERATORS[n].torch_form(x * y) for n in ("sqrt", "log")) + OPERATORS["divide"].torch_form(y, x)
    total.sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize(
    "a, b",
    [
        ("y_pred - y_real", "-(y_real - y_pred)"),
        ("(y_pred - y_real)**2", "(y_real - y_pred)*(y_real - y_pred)"),
        ("y_pred*y_real + 1.5", "1.5 + y_real*y_pred"),
        ("y_pred + y_pred", "2*y_pred"),
        ("log(y_pred)*y_real", "multiply(y_real, log(y_pred))"),
    ],
)
def test_equivalent_trees_share_canonical_key(a: str, b: str) -> None:
    ea, eb = LossExpression.parse(a), LossExpression.parse(b)
    assert ea.tokens != eb.tokens
    assert ea.key == eb.key
    assert ea.complexity == eb.complexity


def test_different_losses_have_different_keys_and_structure_key_abstracts_constants() -> None:
    a, b = LossExpression.parse("0.5*(y_pred - y_real)**2"), LossExpression.parse("0.25*(y_pred - y_real)**2")
    c = LossExpression.parse("sqrt((y_pred - y_real)**2)")
    assert len({a.key, b.key, c.key}) == 3
    assert a.structure_key == b.structure_key != c.structure_key


def test_protected_division_is_not_simplified_away() -> None:
    expr = LossExpression.parse("y_pred / y_pred")
    assert expr.sympy != 1  # protected: 0/0 is not 1
    loss = SymbolicLoss(expr, reduction="none")
    out = loss(torch.tensor([0.0, 2.0]), torch.tensor([0.0, 0.0]))
    assert out.tolist() == [0.0, 1.0]


def test_formula_reparses_to_the_same_loss() -> None:
    for text in ["div(log(y_pred), y_real) + 0.5*sqrt(y_pred)", "exp(sin(y_pred)*cos(y_real)) - y_real",
                 "y_pred**3 + sqrt(3.985*y_real/y_pred)"]:
        expr = LossExpression.parse(text)
        again = LossExpression.parse(expr.formula(digits=17))
        assert again.key == expr.key
        assert LossExpression.parse(expr.prefix()).tokens == expr.tokens


def test_compiled_torch_matches_sympy_on_random_points() -> None:
    gen = torch.Generator().manual_seed(0)
    for text in ["div(log(y_pred), y_real) + 0.5*sqrt(y_pred)", "exp(y_pred - y_real)*cos(y_pred)",
                 "(y_pred - y_real)**2/(1 + y_real**2)"]:
        expr = LossExpression.parse(text)
        fn = compile_expr(expr.sympy)
        p = torch.randn(20, generator=gen, dtype=torch.float64)
        r = torch.randn(20, generator=gen, dtype=torch.float64)
        got = fn(p, r, torch.tensor(fn.constants, dtype=torch.float64))
        for i in range(20):
            want = float(expr.sympy.subs({SYMBOLS["y_pred"]: float(p[i]), SYMBOLS["y_real"]: float(r[i])}))
            assert got[i].item() == pytest.approx(want, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("__import__('os').system('true')", "unknown function"),
        ("y_pred.__class__", "unsupported syntax"),
        ("open('x')", "unknown function"),
        ("lambda: 1", "unsupported syntax"),
        ("y_pred ** 0.5", "integer powers"),
        ("foo + y_pred", "unknown name"),
        ("(y_pred", "cannot parse"),
        ("", "empty expression"),
        ("1e300 * y_pred", "outside"),
        ("log(y_pred, y_real)", "takes 1"),
        ("sin(" * 400 + "y_pred" + ")" * 400, "nested|cannot parse|limit"),
        ("+".join(["y_pred"] * 2000), "limit"),
    ],
)
def test_parser_refuses_unsafe_or_malformed_text(text: str, fragment: str) -> None:
    with pytest.raises(ExpressionError, match=fragment):
        parse(text)


def test_prefix_token_validation() -> None:
    with pytest.raises(ExpressionError, match="unknown token"):
        LossExpression(["pow", "y_pred", "y_real"])
    with pytest.raises(ExpressionError, match="incomplete"):
        LossExpression(["plus", "y_pred"])
    with pytest.raises(ExpressionError, match="extra tokens"):
        LossExpression(["y_pred", "y_real"])
    with pytest.raises(ExpressionError, match="not a number"):
        LossExpression(["plus", "y_pred", True])


def test_symbolic_loss_reductions_regression() -> None:
    mse = SymbolicLoss("(y_pred - y_real)**2", reduction="none")
    x, y = torch.randn(7), torch.randn(7)
    none = mse(x, y)
    assert none.shape == (7,)
    torch.testing.assert_close(none, (x - y) ** 2)
    torch.testing.assert_close(SymbolicLoss("(y_pred - y_real)**2")(x, y), torch.nn.functional.mse_loss(x, y))
    torch.testing.assert_close(SymbolicLoss("(y_pred - y_real)**2", reduction="sum")(x, y), ((x - y) ** 2).sum())
    with pytest.raises(ValueError, match="same shape"):
        mse(torch.randn(4, 1), torch.randn(4))
    with pytest.raises(ValueError, match="reduction"):
        SymbolicLoss("y_pred", reduction="avg")


def test_symbolic_loss_classification_hard_and_soft_targets() -> None:
    ce = SymbolicLoss("-y_real*log(y_pred)")
    logits = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3, 1, 0])
    torch.testing.assert_close(ce(logits, labels), torch.nn.functional.cross_entropy(logits, labels))
    per_sample = SymbolicLoss("-y_real*log(y_pred)", reduction="none")(logits, labels)
    assert per_sample.shape == (6,)
    soft = torch.softmax(torch.randn(6, 4, dtype=torch.float64), 1)
    soft_ce = SymbolicLoss("-y_real*log(y_pred)", problem="classification")(logits, soft)
    torch.testing.assert_close(soft_ce, torch.nn.functional.cross_entropy(logits, soft))
    ce(logits, labels).backward()
    assert torch.isfinite(logits.grad).all()


def test_symbolic_loss_dtype_and_trainable_constants() -> None:
    loss = SymbolicLoss("1.5*(y_pred - y_real)**2", trainable_constants=True)
    assert [n for n, _ in loss.named_parameters()] == ["constants"]
    value = loss(torch.ones(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64))
    assert value.dtype == torch.float64
    value.backward()
    assert loss.constants.grad is not None and loss.constants.grad.abs().sum() > 0


def test_random_trees_print_hash_compile_and_reparse() -> None:
    """Hundreds of random GP trees: every derived form works and the printed formula is the same loss."""
    import random

    from lossforge.gp import expression_of, toolbox_for
    from lossforge.space import load_space

    toolbox, _ = toolbox_for(load_space("survey"))
    random.seed(123)
    gen = torch.Generator().manual_seed(0)
    p, r = torch.randn(16, generator=gen, dtype=torch.float64), torch.randn(16, generator=gen, dtype=torch.float64)
    for _ in range(300):
        expr = expression_of(toolbox.individual())
        assert expr.latex() and len(expr.key) == 16 and expr.complexity >= 1
        again = LossExpression.parse(expr.formula(digits=17))
        assert again.key == expr.key, (expr.formula(), again.formula())
        a = SymbolicLoss(expr, reduction="none")(p, r)
        b = SymbolicLoss(again, reduction="none")(p, r)
        torch.testing.assert_close(a, b, equal_nan=True)


def test_a_folded_constant_keys_as_its_printed_formula() -> None:
    # 0.1*3*10 folds to 3.0000000000000004; its formula says 3.0, and both must be one loss
    expr = LossExpression.parse("0.1*3*10*y_pred*y_real")
    again = LossExpression.parse(expr.formula())
    assert again.key == expr.key and again.structure_key == expr.structure_key
    assert LossExpression.parse("3*y_pred*y_real").key == expr.key


def test_the_canonical_sign_rule_is_for_even_powers_only() -> None:
    odd = LossExpression.parse("(y_real - y_pred)**3"), LossExpression.parse("(y_pred - y_real)**3")
    even = LossExpression.parse("(y_real - y_pred)**4"), LossExpression.parse("(y_pred - y_real)**4")
    assert odd[0].key != odd[1].key  # they differ in sign: two losses
    assert even[0].key == even[1].key


def test_keys_round_constants_to_six_significant_digits() -> None:
    key = lambda c: LossExpression.parse(f"{c!r}*y_pred*y_real").key  # noqa: E731
    assert key(1.2341) != key(1.2342)  # the fifth digit separates losses
    assert key(1.23456) != key(1.23457)  # so does the sixth
    assert key(1.2345671) == key(1.2345674)  # the seventh does not
    assert key(123456.1) == key(123456.4) != key(123457.0)


@pytest.mark.parametrize("text", ["(1000000.0**8)**4*y_pred", "(1000000.0**8)**8*y_pred + y_real",
                                  "div(y_pred, 0.0)*2.0*y_real", "1000.0*1000.0*1000.0*y_pred"])
def test_folded_constants_beyond_the_limit_are_refused(text: str) -> None:
    with pytest.raises(ExpressionError, match=r"fold to .*outside \[-1e\+06, 1e\+06\]") as info:
        LossExpression.parse(text)
    assert "\n" not in str(info.value)
    # the same tree built from tokens (a GP offspring, a stored tree) is refused by the compiler and
    # rejected with that reason, never printed as 1e+192 or oo
    tokens = LossExpression(parse(text))
    with pytest.raises(ExpressionError, match="fold to"):
        compile_expr(tokens.sympy)
    from lossforge.rejection import symbolic_reason

    assert "fold to" in symbolic_reason(tokens)
    assert LossExpression.parse("div(y_pred, 0.0)*y_real").key  # exactly at the limit (1e6) is allowed
