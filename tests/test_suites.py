"""The shipped suites: they load, the default search suite is broad, and transfer data stays out of search."""

from __future__ import annotations

import numpy as np
import pytest

from lossforge.scoring import SUITES_DIR, load_suite
from lossforge.tasks.data import load_arrays

SEARCH_SUITES = ["robust", "quick", "label_noise", "full"]


def _datasets(name: str) -> set[str]:
    return {t.task.settings().get("dataset", "digits") for t in load_suite(name).tasks
            if t.task.problem == "classification"}


@pytest.mark.parametrize("path", sorted(SUITES_DIR.glob("*.toml")), ids=lambda p: p.stem)
def test_every_shipped_suite_loads(path) -> None:
    assert load_suite(path.stem).tasks


def test_robust_spans_data_sets_models_noise_kinds_and_procedures() -> None:
    tasks = [t.task for t in load_suite("robust").tasks]
    settings = [t.settings() for t in tasks]
    assert len(_datasets("robust")) >= 3
    assert {s.get("model", "mlp") for s in settings} >= {"mlp", "cnn"}
    assert len({s["noise"] for s in settings if s["noise"] != "none"}) >= 3
    assert {t.kind_name for t in tasks} >= {"label_noise", "augment", "adversarial", "regularize"}


def test_transfer_data_is_in_no_search_suite() -> None:
    held_out = _datasets("transfer")
    assert held_out  # real MNIST and synthetic_b
    for name in SEARCH_SUITES:
        assert not held_out & _datasets(name), name


def test_holdout_data_is_in_no_other_suite() -> None:
    held_out = _datasets("holdout")
    assert held_out == {"iris", "wine", "breast_cancer"}
    others = {p.stem for p in SUITES_DIR.glob("*.toml")} - {"holdout"}
    assert "transfer" in others
    for name in others:
        assert not held_out & _datasets(name), name


@pytest.mark.parametrize("name, shape, classes", [("iris", (150, 4), 3), ("wine", (178, 13), 3),
                                                   ("breast_cancer", (569, 30), 2)])
def test_bundled_tabular_sets_load_scaled_with_their_classes(name, shape, classes) -> None:
    from lossforge.tasks.data import dataset_classes, load_split

    x, y = load_arrays(name)
    assert x.shape == shape and x.dtype == np.float32 and x.min() == 0 and x.max() == 1
    assert set(np.unique(y)) == set(range(classes)) and dataset_classes(name) == classes
    split = load_split(name, seed=3)
    assert split.n_classes == classes and len(split.y_test) == round(0.3 * shape[0])
    assert len(split.y_train) + len(split.y_test) == shape[0]


def test_generated_data_is_fixed_and_the_two_generators_differ() -> None:
    x, y = load_arrays("synthetic")
    xb, _ = load_arrays("synthetic_b")
    assert x.shape[1] != xb.shape[1] and x.min() >= 0 and x.max() <= 1
    assert set(np.unique(y)) == set(range(10))
    load_arrays.cache_clear()
    x2, y2 = load_arrays("synthetic")
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)


def test_shapes_data_is_in_no_other_suite() -> None:
    assert _datasets("shapes") == {"shapes"}
    for name in {p.stem for p in SUITES_DIR.glob("*.toml")} - {"shapes"}:
        assert "shapes" not in _datasets(name), name


def test_shapes_are_fixed_balanced_images_in_the_unit_range() -> None:
    from lossforge.tasks import shapes

    x, y = load_arrays("shapes")
    assert x.shape == (3000, 1, 16, 16) and x.dtype == np.float32 and x.min() >= 0 and x.max() <= 1
    assert np.bincount(y).tolist() == [300] * 10
    small, labels = shapes.generate(per_class=4, seed=5)
    again, _ = shapes.generate(per_class=4, seed=5)
    other, _ = shapes.generate(per_class=4, seed=6)
    np.testing.assert_array_equal(small, again)
    assert labels.tolist() == [c for c in range(10) for _ in range(4)]
    assert not np.array_equal(small, other)


def test_each_shape_is_recognisable_from_its_pixels() -> None:
    """A nearest-centroid rule (centroids from one draw, tested on another) tells the ten shapes apart far
    above chance: the classes are drawn as named, not noise with labels."""
    from lossforge.tasks import shapes

    x, y = shapes.generate(per_class=60, seed=1)
    xt, yt = shapes.generate(per_class=60, seed=2)
    centroids = np.stack([x[y == c].reshape(60, -1).mean(0) for c in range(10)])
    flat = xt.reshape(len(xt), -1)
    predicted = ((flat[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
    per_class = [(predicted[yt == c] == c).mean() for c in range(10)]
    assert (predicted == yt).mean() > 0.35 and min(per_class) > 0.2, per_class  # chance: 0.1
