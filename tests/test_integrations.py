"""An exported loss used by training libraries (the optional ``integrations`` extra) and in other numerics.

The loss is the Poly-1 expression exported as a standalone module (``lossforge export --format py``), then
imported from its file as a user would, so these tests check the exported code, not SymbolicLoss.
Library tests skip when the library is not installed.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from torch import nn

from lossforge.export import render
from tests.conftest import CUDA_HOWTO
from lossforge.expression import LossExpression

POLY1 = "-y_real*log(y_pred) + y_real*(1 - y_pred)"


@pytest.fixture(scope="module")
def poly1(tmp_path_factory: pytest.TempPathFactory) -> type[nn.Module]:
    """The exported Poly-1 loss class, imported from its own file."""
    path = tmp_path_factory.mktemp("export") / "poly1_loss.py"
    path.write_text(render(LossExpression.parse(POLY1), "py", name="Poly1"))
    spec = importlib.util.spec_from_file_location("poly1_loss", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Poly1


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A shuffled 600/300 train/test subset of scikit-learn's bundled digits, float32 in [0, 1]."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))[:900]
    x, y = (x[order] / 16.0).astype(np.float32), y[order].astype(np.int64)
    return x[:600], y[:600], x[600:], y[600:]


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def test_poly1_export_matches_its_definition(poly1: type[nn.Module]) -> None:
    logits = torch.randn(8, 10, generator=torch.Generator().manual_seed(0))
    target = torch.arange(8)
    p_true = torch.softmax(logits, dim=1)[torch.arange(8), target]
    expected = -torch.log(p_true) + (1 - p_true)
    assert torch.allclose(poly1(reduction="none")(logits, target), expected, atol=1e-5)


def test_skorch_trains_a_classifier_with_the_exported_loss(poly1: type[nn.Module], digits) -> None:
    skorch = pytest.importorskip("skorch")
    x_train, y_train, x_test, y_test = digits
    torch.manual_seed(0)
    net = skorch.NeuralNetClassifier(
        _mlp(), criterion=poly1, optimizer=torch.optim.Adam, lr=0.01, max_epochs=15, batch_size=64,
        train_split=None, verbose=0,
    )
    net.fit(x_train, y_train)
    accuracy = float((net.predict(x_test) == y_test).mean())
    assert accuracy > 0.8, accuracy  # chance is 0.1


# lightning 2.6 calls a torch pytree API that torch 2.13 deprecates; not ours to fix
@pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")
def test_lightning_trains_a_classifier_with_the_exported_loss(poly1: type[nn.Module], digits) -> None:
    lightning = pytest.importorskip("lightning")
    x_train, y_train, x_test, y_test = digits

    class Classifier(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = _mlp()
            self.loss = poly1()

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
            x, y = batch
            return self.loss(self.net(x), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), lr=0.01)

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.from_numpy(x_train), torch.from_numpy(y_train))
    loader = torch.utils.data.DataLoader(data, batch_size=64, shuffle=True)
    model = Classifier()
    trainer = lightning.Trainer(max_epochs=15, accelerator="cpu", devices=1, logger=False,
                                enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, loader)
    with torch.no_grad():
        predicted = model.net(torch.from_numpy(x_test)).argmax(dim=1).numpy()
    accuracy = float((predicted == y_test).mean())
    assert accuracy > 0.8, accuracy  # chance is 0.1


def _logits_and_grad(loss: nn.Module, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits = logits.detach().requires_grad_(True)
    value = loss(logits, target)
    value.backward()
    return value, logits.grad


def test_float64_inputs(poly1: type[nn.Module]) -> None:
    logits = torch.randn(16, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 5
    value, grad = _logits_and_grad(poly1(), logits, torch.arange(16) % 10)
    assert value.dtype == torch.float64 and grad.dtype == torch.float64
    assert torch.isfinite(value) and torch.isfinite(grad).all()


def test_bfloat16_autocast(poly1: type[nn.Module]) -> None:
    torch.manual_seed(2)
    layer, loss = nn.Linear(64, 10), poly1()
    x, target = torch.rand(32, 64), torch.arange(32) % 10
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = layer(x) * 20  # confident logits: probabilities near 0 and 1 stress log and the epsilons
        assert logits.dtype == torch.bfloat16
        value = loss(logits, target)
    value.backward()
    assert torch.isfinite(value)
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason=CUDA_HOWTO)
def test_on_cuda(poly1: type[nn.Module]) -> None:
    loss = poly1().to("cuda")
    logits = torch.randn(16, 10, device="cuda", generator=torch.Generator("cuda").manual_seed(3))
    value, grad = _logits_and_grad(loss, logits, torch.arange(16, device="cuda") % 10)
    assert value.device.type == "cuda" and torch.isfinite(value) and torch.isfinite(grad).all()
    expected = poly1()(logits.cpu(), torch.arange(16) % 10)
    assert torch.allclose(value.cpu(), expected, atol=1e-5)
