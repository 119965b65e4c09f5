"""The one lowering (sympy -> Program) checked against its three backends: the torch closure, the numpy
value-and-derivative kernel and the Python source of the ``.py`` export, on every operator, at the
protected points and on random expressions."""

from __future__ import annotations

import ast
import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lossforge.backends.numpy_kernel import compile_value_and_grad
from lossforge.backends.python_source import python_source
from lossforge.backends.torch_closure import compile_expr
from lossforge.errors import ExpressionError
from lossforge.expression import LossExpression
from lossforge.lowering import LEAVES, lower
from lossforge.operators import INSTRUCTIONS, OPERATORS

# Values that hit every protected branch: zero, tiny of both signs, around each clamp, large.
POINTS = [0.0, 1e-13, -1e-13, 1e-9, -1e-9, 5e-7, -5e-7, 2e-6, 1e-3, -2.5, 0.7, 3.0, 29.0, 31.0, 40.0, -40.0]

#: Node types a generated loss body may contain (the source backend emits nothing else).
_ALLOWED_NODES = (ast.Expression, ast.BinOp, ast.Add, ast.Mult, ast.Pow, ast.Call, ast.Name, ast.Load,
                  ast.Attribute, ast.Constant, ast.UnaryOp, ast.USub)


def _run_source(text: str, helpers: dict, y_pred: torch.Tensor, y_real: torch.Tensor) -> torch.Tensor:
    """Evaluate generated loss source in a namespace holding only torch and the helpers it names (this test
    only; lossforge itself never executes generated code)."""
    tree = ast.parse(text, mode="eval")
    for node in ast.walk(tree):
        assert isinstance(node, _ALLOWED_NODES), ast.dump(node)
        if isinstance(node, ast.Name):
            assert node.id in {"torch", "y_pred", "y_real", *helpers}, node.id
    namespace = {"__builtins__": {}, "torch": torch, **helpers}
    out = eval(compile(tree, "<loss>", "eval"), namespace, {"y_pred": y_pred, "y_real": y_real})  # noqa: S307
    return out + torch.zeros_like(y_pred)


def _check_backends(expression: LossExpression, pred: np.ndarray, real: np.ndarray, exact: bool = True) -> None:
    """All three backends of one Program agree on values, and the numpy derivative on torch's gradient."""
    expr = expression.sympy
    torch_fn, kernel = compile_expr(expr), compile_value_and_grad(expr)
    assert torch_fn.constants == kernel.constants == expression.program.constants

    # torch closure vs generated source: the same torch calls on float32 (the search's precision: the
    # closure reads its constants from a float32 tensor, the source has them as literals), so the same bits
    p32, r32 = torch.tensor(pred, dtype=torch.float32), torch.tensor(real, dtype=torch.float32)
    helpers: dict = {}
    source = python_source(expr, helpers)
    source_value = _run_source(source, helpers, p32, r32)
    torch.testing.assert_close(source_value, torch_fn(p32, r32), rtol=0, atol=0, equal_nan=True)

    # numpy kernel vs torch autograd (float32, the trainers' precision)
    p32 = torch.tensor(pred, dtype=torch.float32, requires_grad=True)
    r32 = torch.tensor(real, dtype=torch.float32)
    value = torch_fn(p32, r32)
    if value.requires_grad:
        (grad,) = torch.autograd.grad(value.sum(), p32, allow_unused=True)
    else:
        grad = None
    grad = torch.zeros_like(p32) if grad is None else grad
    np_value, np_grad = kernel(pred.astype(np.float32), real.astype(np.float32))
    tol = dict(rtol=2e-5, atol=1e-5) if exact else dict(rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(np_value, value.detach().numpy(), **tol)
    np.testing.assert_allclose(np_grad, grad.numpy(), **tol)


def _grid(arity: int) -> tuple[np.ndarray, np.ndarray]:
    pairs = [(a, a) for a in POINTS] if arity == 1 else list(itertools.product(POINTS, POINTS))
    return np.array([p for p, _ in pairs]), np.array([r for _, r in pairs])


@pytest.mark.parametrize("name", list(OPERATORS))
def test_every_operator_lowers_and_backends_agree_at_protected_points(name: str) -> None:
    op = OPERATORS[name]
    text = f"{name}(y_pred)*y_real" if op.arity == 1 else f"{name}(y_pred, y_real)"
    expression = LossExpression.parse(text)
    pred, real = _grid(op.arity)
    _check_backends(expression, pred, real)
    # the torch closure computes exactly the table's torch form
    args = [torch.tensor(pred)] if op.arity == 1 else [torch.tensor(pred), torch.tensor(real)]
    want = op.torch_form(*args) * (torch.tensor(real) if op.arity == 1 else 1)
    got = compile_expr(expression.sympy)(torch.tensor(pred), torch.tensor(real))
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_every_instruction_row_is_used_and_programs_are_well_formed() -> None:
    texts = ["y_pred + y_real*2.5 - 1", "(y_pred - y_real)**3", "div(y_pred, y_real)", "sqrt(y_pred)*y_real",
             "log(y_pred)*y_real", "exp(y_pred - y_real)", "sin(y_pred) + cos(y_real)*y_pred"]
    seen = set()
    for text in texts:
        program = LossExpression.parse(text).program
        for slot, ins in enumerate(program.instructions):
            assert ins.op in INSTRUCTIONS or ins.op in LEAVES, ins.op
            assert all(0 <= a < slot for a in ins.args)  # SSA: arguments come first
            if ins.op == "constant":
                assert 0 <= ins.param < len(program.constants)
            seen.add(ins.op)
    assert set(INSTRUCTIONS) <= seen


def test_constant_index_is_shared_and_in_use_order() -> None:
    expression = LossExpression.parse("0.25*y_pred + sqrt(1.5*y_real) - exp(0.75*y_pred)*y_real")
    program = expression.program
    used = [program.constants[ins.param] for ins in program.instructions if ins.op == "constant"]
    assert used == list(program.constants) and sorted(used) == [0.25, 0.75, 1.5]  # the minus is structure (-1)
    # new constants replace the compiled ones in that one order, in every backend
    new = [c * 2 for c in program.constants]
    p, r = np.linspace(-2, 2, 9), np.linspace(1, 3, 9)
    torch_value = compile_expr(expression.sympy)(torch.tensor(p), torch.tensor(r), torch.tensor(new))
    np_value, _ = compile_value_and_grad(expression.sympy)(p.astype(np.float32), r.astype(np.float32), new)
    np.testing.assert_allclose(np_value, torch_value.numpy(), rtol=1e-5, atol=1e-6)
    moved = LossExpression(expression.tokens)
    assert moved.program is lower(moved.sympy)  # cached: one lowering per expression form


def test_lowering_refuses_what_the_table_cannot_express() -> None:
    import sympy

    x = sympy.Symbol("y_pred", real=True)
    with pytest.raises(ExpressionError, match="power"):
        lower(x ** sympy.Rational(1, 2))
    with pytest.raises(ExpressionError, match="no lowering for tanh"):
        lower(sympy.tanh(x))
    with pytest.raises(ExpressionError, match="unknown symbol"):
        lower(sympy.Symbol("z") + x)


# --- random expressions ---------------------------------------------------------------------------------

_LEAF = st.one_of(st.sampled_from(["y_pred", "y_real"]),
                  st.floats(-3, 3, allow_nan=False).map(lambda v: round(v, 2)))


def _tree(depth: int):
    if depth == 0:
        return _LEAF.map(lambda t: [t])
    sub = _tree(depth - 1)
    unary = st.tuples(st.sampled_from([n for n, o in OPERATORS.items() if o.arity == 1]), sub)
    binary = st.tuples(st.sampled_from([n for n, o in OPERATORS.items() if o.arity == 2]), sub, sub)
    return st.one_of(sub, unary.map(lambda t: [t[0], *t[1]]), binary.map(lambda t: [t[0], *t[1], *t[2]]))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(tokens=_tree(4), seed=st.integers(0, 2**16))
def test_random_expressions_agree_across_backends(tokens: list, seed: int) -> None:
    expression = LossExpression(tokens)
    if expression.constant_problem is not None:
        with pytest.raises(ExpressionError):
            lower(expression.sympy)
        return
    rng = np.random.default_rng(seed)
    pred = np.concatenate([rng.normal(0, 1.5, 24), [0.0, 1e-9, -1e-9, 5e-7]])
    real = np.concatenate([rng.normal(0, 1.5, 24), [0.0, -1e-9, 1e-9, 3.0]])
    # float32 rounding may be amplified by a deep composition, hence the looser tolerance here
    _check_backends(expression, pred, real, exact=False)


@pytest.mark.parametrize("text", ["(y_pred - y_real)**2", "(y_pred - y_real)**3", "y_pred**4*y_real",
                                  "(y_pred*y_real + 1)**5", "2.5*y_pred*y_real*sin(y_pred) - y_pred + 0.5",
                                  "div(y_pred**3, y_real) + sqrt(y_pred)**2"])
def test_sum_product_and_power_rows_agree_across_backends(text: str) -> None:
    pred, real = _grid(2)
    keep = (np.abs(pred) < 10) & (np.abs(real) < 10)  # powers of 40 overflow float32 in a fifth power
    _check_backends(LossExpression.parse(text), pred[keep], real[keep])
