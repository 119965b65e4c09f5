"""One trainer interface: the failure ledger both trainers share, the trainer factory, the penalty seam of
``BatchedTrainer.step``, and the layering (trainers and models never import the tasks)."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

import lossforge
from lossforge.loss import SymbolicLoss
from lossforge.models import BatchedMLP, BatchedNormMLP
from lossforge.numpy_mlp import NumpyMLPTrainer
from lossforge.tasks.regression import ENGINES, RegressionTask
from lossforge.training import BatchedTrainer, FailureLedger, guarded_loss, make_trainer


def sym(text: str) -> SymbolicLoss:
    return SymbolicLoss(text, reduction="none")


def raising(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    raise KeyError("missing")


def test_the_ledger_keeps_the_first_reason_and_one_mask() -> None:
    ledger = FailureLedger(3, max_grad_norm=10.0)
    ledger.fail(1, "first")
    ledger.fail(1, "second")
    assert ledger.failures == [None, "first", None]
    assert ledger.dead.tolist() == [False, True, False] and ledger.dead_tensor.tolist() == [False, True, False]
    assert ledger.alive().tolist() == [True, False, True]
    ledger.check_gradient_norms(np.array([0.0, np.nan, 11.0]), step=0)
    assert ledger.failures == ["no gradient with respect to the model's output", "first",
                               "exploding gradient (norm 11) at step 0"]
    later = FailureLedger(2)
    later.check_gradient_norms(np.array([0.0, np.inf]), step=4)  # a zero gradient later is a minimum, not a failure
    assert later.failures == [None, "non-finite gradient at step 4"]
    later.check_values(np.array([False, False]), step=5)
    assert later.failures == ["non-finite loss value at step 5", "non-finite gradient at step 4"]


def test_both_trainers_write_the_same_reasons_at_the_same_steps_into_their_ledgers() -> None:
    """Step by step, the numpy and the autograd trainer fail the same models for the same reasons."""
    task = RegressionTask.from_preset("gaussian", n_train=64)
    losses = [sym("y_real**2"), sym("1000000.0*y_pred"), sym("-(y_pred**6)"), sym("exp(y_pred**2 + 30)**3"),
              lambda p, t: (p - t) * float("nan"), raising, sym("(y_pred - y_real)**2")]
    k = len(losses)
    data = task.make_data(0)
    x, y = data.x_noisy.expand(k, -1, -1).contiguous(), data.y_noisy.expand(k, -1).contiguous()
    reference = task.build_model(k, 0)
    autograd = BatchedTrainer(reference, [guarded_loss(loss) for loss in losses],
                              torch.optim.Adam(reference.parameters(), lr=task.lr, foreach=True))
    fast = NumpyMLPTrainer(task.build_model(k, 0), losses, task.activation)
    x_np = fast.augmented_inputs(x.numpy())
    history = []
    with np.errstate(all="ignore"):
        for step in range(40):
            autograd.step(reference(x).squeeze(-1), list(y.unbind(0)))
            fast.step(x_np, y.numpy(), task.lr)
            assert fast.ledger.failures == autograd.ledger.failures, f"step {step}"
            assert (fast.ledger.dead == autograd.ledger.dead).all()
            history.append(list(autograd.ledger.failures))
    final = history[-1]
    assert final[0] == "no gradient with respect to the model's output"
    assert final[1] == "exploding gradient (norm 2.1e+06) at step 0"
    assert final[2].startswith("exploding gradient") and not final[2].endswith("at step 0")
    assert final[3] == final[4] == "non-finite loss value at step 0"
    assert final[5] == "loss raised RuntimeError: KeyError: 'missing'"
    assert final[6] is None
    assert history[0][2] is None  # the exploding one failed later, and both trainers saw it at that step


def test_the_factory_picks_the_first_trainer_that_supports_the_model() -> None:
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    losses = [sym("(y_pred - y_real)**2")] * 2
    tanh = BatchedMLP(2, [1, 8, 1], gen(), "tanh")
    assert isinstance(make_trainer(ENGINES["numpy"], tanh, losses, lr=0.1, device="cpu"), NumpyMLPTrainer)
    assert isinstance(make_trainer(ENGINES["autograd"], tanh, losses, lr=0.1, device="cpu"), BatchedTrainer)
    gelu = BatchedMLP(2, [1, 8, 1], gen(), "gelu")
    assert isinstance(make_trainer(ENGINES["numpy"], gelu, losses, lr=0.1, device="cpu"), BatchedTrainer)
    normed = BatchedNormMLP(2, [1, 8, 1], gen(), "tanh")  # batch norm: not the plain MLP the numpy trainer computes
    assert isinstance(make_trainer(ENGINES["numpy"], normed, losses, lr=0.1, device="cpu"), BatchedTrainer)
    with pytest.raises(ValueError, match="no trainer"):
        make_trainer((NumpyMLPTrainer,), gelu, losses, lr=0.1, device="cpu")


def test_a_penalty_trains_live_models_and_never_hides_a_missing_gradient() -> None:
    gen = torch.Generator().manual_seed(0)
    model = BatchedMLP(2, [3, 4, 2], gen, "tanh")
    before = [p.detach().clone() for p in model.parameters()]
    trainer = BatchedTrainer(model, [sym("0.5 + 0*y_pred"), sym("-y_real*log(y_pred)")],
                             torch.optim.SGD(model.parameters(), lr=0.1))
    x, target = torch.randn(5, 3, generator=gen), torch.tensor([0, 1, 1, 0, 1])
    outputs = model(x)
    trainer.step(outputs, target, penalty=outputs.pow(2).mean(dim=(1, 2)))
    assert trainer.failures == ["no gradient with respect to the model's output", None]
    for b, p in zip(before, model.parameters()):
        assert torch.equal(p[0], b[0])  # the failed model took no step, penalty or not
        assert not torch.equal(p[1], b[1])


def test_trainers_and_models_never_import_a_task() -> None:
    package = Path(lossforge.__file__).parent
    for name in ("training.py", "models.py", "numpy_mlp.py"):
        tree = ast.parse((package / name).read_text(encoding="utf-8"))
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        higher = {m for m in imported if m.startswith(("lossforge.tasks", "lossforge.engine", "lossforge.scoring"))}
        assert not higher, f"{name} imports {sorted(higher)}"
