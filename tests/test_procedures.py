"""The survey's procedures: augmentation, adversarial attacks and training, regularisation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lossforge.errors import ConfigError
from lossforge.models import BatchedBatchNorm, BatchedCNN, BatchedMLP, drop_block
from lossforge.tasks.adversarial import (
    AdversarialTask,
    cross_entropy_per_model,
    fgsm,
    input_gradient,
    mim,
    pgd,
)
from lossforge.tasks.augment import AugmentTask, cutmix, cutout, gaussian_noise, mixup, one_hot, rotate_zoom
from lossforge.tasks.classification import Classifier
from lossforge.tasks.regularize import RegularizeTask, entropy, smooth_targets

torch.set_num_threads(1)


def ce(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(z, t, reduction="none")


def gce(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    target = F.one_hot(t, z.shape[-1]).to(z.dtype) if t.dim() == 1 else t
    p = (z.softmax(-1) * target).sum(-1)
    return (1 - p.clamp_min(1e-12) ** 0.7) / 0.7


def nan_loss(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return ce(z, t) * float("nan")


def constant_loss(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return z.sum(-1) * 0.0 + 1.0


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- augmentation ---------------------------------------------------------------------------------------


def test_cutout_zeroes_one_square_of_the_stated_size() -> None:
    x = torch.ones(50, 1, 8, 8)
    out = cutout(x, 3, gen())
    zeros = out[:, 0] == 0
    assert (zeros.sum(dim=(1, 2)) == 9).all()
    rows, cols = zeros.any(dim=2), zeros.any(dim=1)
    assert (rows.sum(1) == 3).all() and (cols.sum(1) == 3).all()  # 9 zeros in 3 rows x 3 cols: a square
    assert (out[~zeros.unsqueeze(1)] == 1).all()


def test_cutmix_mixes_labels_in_proportion_to_area() -> None:
    n = 10
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 8, 8).clone()
    labels = torch.arange(n)  # image i is filled with i and labelled i
    out, target = cutmix(x, one_hot(labels, 10), 1.0, gen(3))
    assert torch.allclose(target.sum(1), torch.ones(n))
    for i in range(n):
        pasted = (out[i] != i).float().mean().item()  # pixels that came from the partner
        if pasted > 0:
            partner = int(out[i][out[i] != i][0])
            assert target[i, labels[partner]].item() == pytest.approx(pasted, abs=1e-6)
            assert target[i, labels[i]].item() == pytest.approx(1 - pasted, abs=1e-6)


def test_mixup_mixes_inputs_and_labels_with_the_same_lambda() -> None:
    labels = torch.arange(16) % 10
    target = one_hot(labels, 10)
    x = target.view(16, 1, 1, 10).clone()  # the input *is* the label: both must mix identically
    out, mixed = mixup(x, target, 0.4, gen(1))
    assert torch.allclose(out.view(16, 10), mixed, atol=1e-6)
    assert torch.allclose(mixed.sum(1), torch.ones(16))
    assert not torch.equal(mixed, target)


def test_rotation_and_noise() -> None:
    x = torch.rand(3, 1, 8, 8)
    assert torch.allclose(rotate_zoom(x, torch.zeros(3), torch.ones(3)), x, atol=1e-6)
    assert torch.allclose(rotate_zoom(x, torch.full((3,), 90.0), torch.ones(3)), torch.rot90(x, 1, (2, 3)), atol=1e-5)
    noisy = gaussian_noise(torch.full((20000,), 0.5), 0.1, gen())
    assert noisy.min() >= 0 and noisy.max() <= 1 and noisy.std().item() == pytest.approx(0.1, rel=0.05)


def test_augment_task_reports_corrupted_accuracy_and_scores_their_mean() -> None:
    task = AugmentTask(augmentations=["mixup", "affine", "noise", "cutout"], epochs=3)
    (result,) = task.evaluate([ce], 0)
    m = result.metrics
    assert set(m) == {"acc_clean", "acc_noise", "acc_rotate"}
    assert result.score == pytest.approx((m["acc_clean"] + m["acc_noise"] + m["acc_rotate"]) / 3)


# --- adversarial ----------------------------------------------------------------------------------------


def _model(k: int = 2) -> Classifier:
    return Classifier(BatchedMLP(k, [64, 32, 10], gen(4)), flatten_images=True).eval()


def _batch(n: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(n, 1, 8, 8, generator=gen(5))
    return x, torch.arange(n) % 10


def test_fgsm_moves_by_exactly_epsilon_sign_grad_then_clips() -> None:
    model = _model()
    with torch.no_grad():  # make the two models differ, so each needs its own gradient
        model.body.layers[0].weight[1].mul_(-1)
    x, y = _batch()
    xk = x.expand(2, *x.shape)
    adv = fgsm(model, xk, y, 0.1)
    for k in range(2):  # one model at a time, by hand
        xs = x.clone().requires_grad_(True)
        F.cross_entropy(model(xs)[k], y).backward()
        assert torch.equal(adv[k], (x + 0.1 * xs.grad.sign()).clamp(0, 1))
    inside = (x > 0.1) & (x < 0.9)
    assert torch.allclose((adv - xk).abs()[:, inside], torch.tensor(0.1), atol=1e-6)
    assert not torch.equal(adv[0], adv[1])


def test_pgd_stays_in_the_ball_and_the_box_and_hurts() -> None:
    model = _model()
    x, y = _batch(200)
    xk = x.expand(2, *x.shape)
    adv = pgd(model, xk, y, 0.1, 0.05, 7, generator=gen())
    assert (adv - xk).abs().max() <= 0.1 + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    with torch.no_grad():
        assert (cross_entropy_per_model(model(adv), y) > cross_entropy_per_model(model(xk), y)).all()
    assert torch.equal(adv[0], adv[1])  # identical models, shared random start


def test_mim_accumulates_momentum() -> None:
    model = _model(1)
    x, y = _batch()
    xk = x.unsqueeze(0)
    eps, step, decay = 0.3, 0.05, 0.9
    # two steps by hand
    g1 = input_gradient(model, xk, y, cross_entropy_per_model)
    m1 = g1 / g1.abs().flatten(2).sum(2)[..., None, None, None]
    x1 = (xk + step * m1.sign()).clamp(xk - eps, xk + eps).clamp(0, 1)
    g2 = input_gradient(model, x1, y, cross_entropy_per_model)
    m2 = decay * m1 + g2 / g2.abs().flatten(2).sum(2)[..., None, None, None]
    x2 = (x1 + step * m2.sign()).clamp(xk - eps, xk + eps).clamp(0, 1)
    assert torch.allclose(mim(model, xk, y, eps, step, 2, decay=decay), x2)
    # without momentum it is BIM
    bim = pgd(model, xk, y, eps, step, 4, random_start=False)
    assert torch.equal(mim(model, xk, y, eps, step, 4, decay=0.0), bim)
    assert not torch.equal(mim(model, xk, y, eps, step, 4, decay=1.0), bim)


def test_adversarial_training_raises_robust_accuracy() -> None:
    standard = AdversarialTask(attack="none", epochs=10).evaluate([ce], 0)[0]
    trained = AdversarialTask(attack="pgd", epochs=10).evaluate([ce], 0)[0]
    assert set(trained.metrics) == {"acc_clean", "acc_fgsm", "acc_pgd"}
    assert trained.score == trained.metrics["acc_pgd"]
    assert trained.metrics["acc_pgd"] > standard.metrics["acc_pgd"] + 0.2
    assert standard.metrics["acc_pgd"] <= standard.metrics["acc_fgsm"] <= standard.metrics["acc_clean"]


@pytest.mark.parametrize("attack", ["fgsm", "bim", "mim", "free"])
def test_every_training_attack_runs_and_isolates_a_broken_loss(attack: str) -> None:
    task = AdversarialTask(attack=attack, epochs=4)
    results = task.evaluate([ce, nan_loss], 0)
    assert results[0].status == "complete" and results[0].metrics["acc_clean"] > 0.3
    assert results[1].status == "failed" and "non-finite" in results[1].reason
    assert results[0].score == task.evaluate([ce], 0)[0].score


def test_free_training_replays_batches_over_fewer_epochs() -> None:
    assert AdversarialTask(attack="free", epochs=20, free_replays=4).epochs_to_run() == 5
    assert AdversarialTask(attack="pgd", epochs=20).epochs_to_run() == 20


# --- regularisation -------------------------------------------------------------------------------------


def test_dropblock_drops_contiguous_blocks_at_about_the_rate() -> None:
    x = torch.ones(2, 64, 4, 12, 12)
    out = drop_block(x, 0.2, 3, gen())
    dropped = (out[0] == 0).float()
    assert dropped.mean().item() == pytest.approx(0.2, abs=0.02)
    assert torch.equal(out[0], out[1])  # one mask shared by the K models
    kept = out[0][out[0] != 0]
    assert torch.allclose(kept, torch.full_like(kept, dropped.numel() / (dropped.numel() - dropped.sum())))
    # every dropped position lies in a fully dropped 3x3 square: the mask equals its morphological opening
    d = dropped.view(-1, 1, 12, 12)
    corners = 1 - F.max_pool2d(1 - d, 3, stride=1)
    assert torch.equal(F.max_pool2d(F.pad(corners, (2, 2, 2, 2)), 3, stride=1), d)


def test_batch_norm_keeps_statistics_per_model() -> None:
    bn = BatchedBatchNorm(2, 3)
    a = torch.randn(32, 3, generator=gen())
    out = bn(torch.stack([a, 3 * a + 5]))
    assert torch.allclose(out[0], out[1], atol=1e-4)
    assert torch.allclose(bn.running_mean[1], 0.1 * (3 * a + 5).mean(0), atol=1e-5)
    bn.eval()
    assert not torch.allclose(bn(torch.stack([a, a]))[0], bn(torch.stack([a, a]))[1])


def test_cnn_with_batch_norm_and_dropblock_runs_batched() -> None:
    cnn = BatchedCNN(3, 1, (8, 8), 10, gen(), channels=(4, 8), dropblock=0.2, batch_norm=True)
    out = cnn(torch.rand(5, 1, 8, 8), gen(1))
    assert out.shape == (3, 5, 10) and torch.allclose(out[0], out[2])


def test_label_smoothing_targets_sum_to_one() -> None:
    t = smooth_targets(torch.tensor([0, 3, 9]), 10, 0.1)
    assert torch.allclose(t.sum(1), torch.ones(3))
    assert t[1, 3].item() == pytest.approx(0.91) and t[1, 0].item() == pytest.approx(0.01)


def test_entropy_regularisation_lowers_confidence() -> None:
    plain = RegularizeTask(dropout=0.0, label_smoothing=0.0, noise="none", epochs=8)
    penalised = RegularizeTask(dropout=0.0, label_smoothing=0.0, noise="none", epochs=8, entropy_weight=1.0)
    c0 = plain.evaluate([ce], 0)[0].metrics["confidence"]
    c1 = penalised.evaluate([ce], 0)[0].metrics["confidence"]
    assert c1 < c0 - 0.05
    assert entropy(torch.zeros(4, 10)).allclose(torch.log(torch.tensor(10.0)))
    # the penalty's own gradient does not hide a candidate loss without one
    assert penalised.evaluate([constant_loss], 0)[0].reason.startswith("no gradient")


# --- every procedure: batched = one by one, configuration errors -----------------------------------------


@pytest.mark.parametrize(
    "task",
    [
        AugmentTask(augmentations=["cutmix", "affine", "noise"], epochs=3),
        AdversarialTask(attack="pgd", epochs=2),
        AdversarialTask(attack="free", epochs=4),
        RegularizeTask(epochs=3, batch_norm=True, entropy_weight=0.2),
        RegularizeTask(model="cnn", hidden=[], dropout=0.0, dropblock=0.2, batch_norm=True, epochs=2),
    ],
    ids=["augment", "pgd", "free", "regularize-mlp", "regularize-cnn"],
)
def test_procedure_batched_equals_one_by_one(task) -> None:
    batched = task.evaluate([ce, nan_loss, gce], 11)
    alone = [task.evaluate([loss], 11)[0] for loss in (ce, gce)]
    assert batched[1].status == "failed"
    for b, a in zip((batched[0], batched[2]), alone):
        assert b.status == a.status == "complete"
        assert b.score == pytest.approx(a.score, abs=1e-9)
        for name, value in a.metrics.items():
            assert b.metrics[name] == pytest.approx(value, abs=1e-6)


@pytest.mark.parametrize(
    ("cls", "settings", "field"),
    [
        (AugmentTask, {"augmentations": ["blur"]}, "augmentations"),
        (AugmentTask, {"augmentations": ["mixup", "mixup"]}, "augmentations"),
        (AugmentTask, {"cutout_size": 9}, "cutout_size"),
        (AugmentTask, {"mix_alpha": 0.0}, "mix_alpha"),
        (AugmentTask, {"test_noise_std": -0.1}, "test_noise_std"),
        (AdversarialTask, {"attack": "cw"}, "attack"),
        (AdversarialTask, {"epsilon": 2.0}, "epsilon"),
        (AdversarialTask, {"attack_steps": 0}, "attack_steps"),
        (AdversarialTask, {"robust_weight": 1.5}, "robust_weight"),
        (RegularizeTask, {"dropout": 1.0}, "dropout"),
        (RegularizeTask, {"dropblock": 0.2}, "dropblock"),
        (RegularizeTask, {"label_smoothing": 1.0}, "label_smoothing"),
        (RegularizeTask, {"batch_norm": "yes"}, "batch_norm"),
    ],
)
def test_bad_procedure_settings_raise_config_error(cls, settings: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        cls(**settings)


def test_augment_needs_images() -> None:
    pytest.importorskip("mnist1d")
    with pytest.raises(ConfigError, match="image dataset"):
        AugmentTask(dataset="mnist1d")
