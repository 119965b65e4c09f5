"""A found loss after the search: the ``.py`` export and SymbolicLoss agree, compile and survive what a
trainer does with them (jit.script, float64, pickling)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from lossforge.export import to_python
from lossforge.expression import LossExpression
from lossforge.loss import SymbolicLoss
from tests.conftest import exported_class

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")




def _value_and_grad(module, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.clone().requires_grad_(True)
    value = module(x, target)
    value.sum().backward()
    return value.detach(), x.grad


# a constant numerator of a protected division: the only place a number reaches a helper as an argument
CONSTANT_NUMERATORS = ["div(2.1, y_pred) + y_real", "y_real*div(0.7, 1.3 + y_pred)",
                       "-y_real*log(y_pred) + div(0.1, y_pred + y_real)"]


@pytest.mark.parametrize("text", CONSTANT_NUMERATORS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_constant_numerator_keeps_the_input_dtype_in_the_export(tmp_path: Path, text: str, dtype) -> None:
    # Before: the export passed the numerator to protected_div as a Python float, which torch.as_tensor made
    # a float32 tensor: in float64 the export computed with 0.7 rounded to 0.69999999 (SymbolicLoss did not)
    expression = LossExpression.parse(text)
    exported = exported_class(tmp_path, expression)
    regression = (torch.tensor([0.3, 1.7, -2.1, 1e-9], dtype=dtype), torch.tensor([1.0, -0.5, 2.0, 3.0], dtype=dtype))
    logits = torch.tensor([[2.0, -1.0, 0.5], [30.0, -30.0, 0.0]], dtype=dtype)
    for x, target in (regression, (logits, torch.tensor([0, 2]))):
        va, ga = _value_and_grad(SymbolicLoss(expression, reduction="none"), x, target)
        vb, gb = _value_and_grad(exported(reduction="none"), x, target)
        assert vb.dtype == dtype
        assert torch.equal(va, vb), (va, vb)
        assert torch.equal(ga, gb), (ga, gb)


@pytest.mark.parametrize("text", CONSTANT_NUMERATORS)
def test_an_export_with_a_constant_numerator_compiles_with_jit_script(tmp_path: Path, text: str) -> None:
    # Before: torch.jit.script refused the module ("Expected a value of type 'Tensor' for argument 'a' but
    # instead found type 'float'"), though the export promises it compiles
    expression = LossExpression.parse(text)
    exported = exported_class(tmp_path, expression)
    scripted = torch.jit.script(exported(reduction="none"))
    x, target = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 0.3]]), torch.tensor([1, 0])
    assert torch.equal(scripted(x, target), SymbolicLoss(expression, reduction="none")(x, target))


def test_symbolic_loss_pickles_as_a_trainer_saves_it(tmp_path: Path) -> None:
    # Before: pickle.dumps(SymbolicLoss(...)) raised "Can't pickle local object 'closure.<locals>.run'", so
    # torch.save(model) with the loss as a submodule, a pickled skorch net or a spawned worker failed
    import pickle

    weight = torch.tensor([1.0, 2.0, 0.5])
    loss = SymbolicLoss("-y_real*log(y_pred) + 0.3*div(y_real, 1.5 + y_pred)", weight=weight,
                        trainable_constants=True, label_smoothing=0.1, ignore_index=2)
    with torch.no_grad():
        loss.constants.add_(0.25)  # tuned since it was built: the pickle keeps the tuned values
    logits, target = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 0.3], [1.0, 1.0, 1.0]]), torch.tensor([1, 0, 2])
    expected = loss(logits, target)
    model = torch.nn.Sequential(torch.nn.Linear(2, 3))
    model.criterion = loss
    path = tmp_path / "model.pt"
    torch.save(model, path)
    restored = torch.load(path, weights_only=False).criterion
    again = pickle.loads(pickle.dumps(loss))
    for copy in (restored, again):
        assert isinstance(copy.constants, torch.nn.Parameter)
        assert torch.equal(copy(logits, target), expected)
        assert torch.equal(copy(logits.double(), target), loss(logits.double(), target))


CE = "-y_real*log(y_pred)"


@pytest.fixture(scope="module")
def exported_ce(tmp_path_factory: pytest.TempPathFactory) -> type:
    return exported_class(tmp_path_factory.mktemp("ce"), LossExpression.parse(CE))


@pytest.mark.parametrize("maker", ["symbolic", "export"])
def test_one_hot_integer_targets_are_refused_not_trained_as_regression(exported_ce: type, maker: str) -> None:
    # Before: F.one_hot(y, C) (int64) with problem="auto" was read as regression of the logits on the one-hot
    # rows (a number, no error); with problem="classification" it broadcast the one-hot of the one-hot, an
    # error about tensor sizes or, where N == C, a silently wrong loss. nn.CrossEntropyLoss refuses it too.
    make = (lambda **kw: SymbolicLoss(CE, **kw)) if maker == "symbolic" else exported_ce
    logits, labels = torch.randn(3, 3, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 2, 1])
    one_hot = torch.nn.functional.one_hot(labels, 3)
    with pytest.raises(ValueError, match="problem="):
        make()(logits, one_hot)
    with pytest.raises(ValueError, match="class indices"):
        make(problem="classification")(logits, one_hot)
    with pytest.raises(ValueError, match="class indices"):
        make(problem="classification")(logits, labels[:, None])
    # what the messages suggest gives cross-entropy
    expected = torch.nn.functional.cross_entropy(logits, labels)
    assert torch.allclose(make()(logits, one_hot.argmax(1)), expected)
    assert torch.allclose(make(problem="classification")(logits, one_hot.float()), expected)
    # a genuine integer regression target of one output per sample is still regression
    assert make()(torch.tensor([[1.5], [2.0]]), torch.tensor([[1], [2]])).item() == pytest.approx(
        SymbolicLoss(CE, problem="regression")(torch.tensor([[1.5], [2.0]]), torch.tensor([[1.0], [2.0]])).item())


@pytest.mark.parametrize("name", ["ValueError", "valueError", "Exception", "TypeError"])
def test_a_class_name_never_shadows_a_builtin_the_module_calls(tmp_path: Path, name: str) -> None:
    # Before: `export --name ValueError` defined class ValueError, so the module's own `raise ValueError(...)`
    # built the loss instead; a bad option recursed, each message quoting the last, until memory ran out.
    # A builtin's name is refused now (it was rewritten to ValueError_ for a while, which broke the import
    # the user wrote); any other identifier is the class name exactly.
    import builtins

    from lossforge.errors import ExportError

    expression = LossExpression.parse("(y_pred - y_real)**2")
    if hasattr(builtins, name):
        with pytest.raises(ExportError, match=f"class name '{name}' is a Python builtin.*use another, e.g. "):
            to_python(expression, name=name)
        return
    source = to_python(expression, name=name)
    assert f"\nclass {name}(" in source
    path = tmp_path / "named.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("named", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(ValueError, match="reduction must be"):
        getattr(module, name)(reduction="avg")
    with pytest.raises(ValueError, match="same shape"):
        getattr(module, name)()(torch.zeros(3), torch.zeros(4))


@pytest.mark.parametrize("maker", ["symbolic", "export"])
def test_integer_predictions_are_refused_not_computed_with_truncated_constants(tmp_path: Path, maker: str) -> None:
    # Before: loss(torch.tensor([1, 2]), torch.tensor([1, 3])) cast the constants to int64: 2.5*(...)**2 gave
    # [0, 2] for [0, 2.5] and "+ 0.5" vanished, silently (torch's own losses refuse integer inputs)
    expression = LossExpression.parse("2.5*(y_pred - y_real)**2 + 0.5")
    cls = (lambda **kw: SymbolicLoss(expression, **kw)) if maker == "symbolic" else exported_class(tmp_path, expression)

    def make():
        return cls(reduction="none")

    with pytest.raises(ValueError, match="floating"):
        make()(torch.tensor([1, 2]), torch.tensor([1, 3]))
    with pytest.raises(ValueError, match="floating"):
        make()(torch.tensor([[1, 2]]), torch.tensor([0]))
    assert make()(torch.tensor([1.0, 2.0]), torch.tensor([1, 3])).tolist() == [0.5, 3.0]
