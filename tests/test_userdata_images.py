"""Own data as multi-channel images (``image_shape = [C, H, W]``) and feature scaling fitted on training rows."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from lossforge.cli import main
from lossforge.data_suite import data_suite_spec, parse_image_shape
from lossforge.errors import ConfigError
from lossforge.engine import Search, SearchConfig
from lossforge.scoring import load_suite, make_loss, suite_from_spec
from lossforge.tasks.registry import make_task
from lossforge.tasks.user import UserClassificationTask, fit_range

pd = pytest.importorskip("pandas")
SIDE = 6


def images(n: int, channels: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` channel-major rows of ``channels`` x 6 x 6 images in 0..255 over uniform noise, and labels of 3
    classes: class 0 has the left half of channel 0 lit, class 1 the left half of the last channel (the top half
    with one channel), class 2 nothing. With 2 channels a model that sums the channels confuses classes 0 and 1,
    and one that sees channel 0 only confuses 1 and 2: both stay at or below 2/3 accuracy."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = rng.uniform(0, 90, size=(n, channels, SIDE, SIDE))
    x[y == 0, 0, :, : SIDE // 2] += 150
    if channels > 1:
        x[y == 1, channels - 1, :, : SIDE // 2] += 150
    else:
        x[y == 1, 0, : SIDE // 2, :] += 150
    return np.round(x).reshape(n, -1), y


def image_csv(tmp_path: Path, channels: int, n: int = 300) -> Path:
    x, y = images(n, channels)
    frame = pd.DataFrame(x, columns=[f"p{i}" for i in range(x.shape[1])])
    frame["label"] = y
    path = tmp_path / f"img{channels}.csv"
    frame.to_csv(path, index=False)
    return path


FAST = {"noise": "symmetric", "noise_rate": 0.2, "model": "cnn", "channels": [6], "hidden": [], "epochs": 6,
        "batch_size": 32}


@pytest.mark.parametrize("channels", [1, 2])
def test_the_cnn_learns_c_channel_images_on_plain_and_augment(tmp_path: Path, channels: int) -> None:
    csv = image_csv(tmp_path, channels)
    shape = [channels, SIDE, SIDE] if channels > 1 else [SIDE, SIDE]
    spec = data_suite_spec(csv, "label", noise="symmetric:0.2", image_shape=shape, model="cnn",
                           procedures="plain,augment", epochs=6)
    assert [list(t["settings"]["image_shape"]) for t in spec["tasks"]] == [shape, shape]
    assert list(spec["tasks"][1]["settings"]["augmentations"]) == ["affine", "noise", "cutout"]
    for entry in spec["tasks"]:
        task = make_task(entry["type"], **{**entry["settings"], "channels": [6], "batch_size": 32})
        split = task.data(0)
        assert split.x_train.shape[1:] == (channels, SIDE, SIDE) == split.x_test.shape[1:]
        model = task.build_model(1, split.x_train[0].numel(), 3, torch.Generator().manual_seed(0))
        assert model.body.convs[0].weight.shape[2] == channels  # [K, out, in, k, k]: the CNN sees C channels
        alone = task.evaluate([make_loss("cross_entropy", "classification")], seed=0)[0]
        # chance is 1/3; a model blind to which channel is lit gets at most 2/3
        assert alone.status == "complete" and alone.metrics["acc_clean"] > 0.8, alone
        if entry["name"] == "augment":
            assert {"acc_noise", "acc_rotate"} <= set(alone.metrics)  # the image metrics ran on C channels
        batch = task.evaluate([make_loss(s, "classification") for s in ("mae", "cross_entropy")], seed=0)
        assert batch[1].score == alone.score  # bit-identical alone or in a batch
        assert batch[1].metrics == pytest.approx(alone.metrics, rel=1e-6)


def test_each_channel_keeps_its_pixels_and_its_own_scale(tmp_path: Path) -> None:
    """Channel c of each split image is channel c of its row (channel-major), scaled by that channel's range
    over the training rows: the channels are not mixed up."""
    csv = image_csv(tmp_path, 2, n=60)
    task = UserClassificationTask(dataset=str(csv), target="label", image_shape=[2, SIDE, SIDE], **FAST)
    x_raw, _ = images(60, 2)
    train, _ = task.split_rows(0)
    split = task.data(0)
    raw = torch.tensor(x_raw[train.numpy()].reshape(-1, 2, SIDE, SIDE))
    for c in range(2):  # channel c of the tensor is channel c of the row, scaled by that channel's range
        low, high = raw[:, c].min(), raw[:, c].max()
        assert torch.allclose(split.x_train[:, c], ((raw[:, c] - low) / (high - low)).float(), atol=1e-6)


@pytest.mark.parametrize("shape, message", [
    ([SIDE, SIDE], "needs 1x6x6 = 36 features a row; the data has 72 (with 2 channels: image_shape [2, 6, 6])"),
    ([3, SIDE, SIDE], "needs 3x6x6 = 108 features"),
    ([0, SIDE], "image_shape must be [height, width] or [channels, height, width] of positive integers"),
    ([1, 2, SIDE, SIDE], "image_shape must be [height, width] or [channels, height, width]"),
    ([36, 2, 1], "more than 16: it is [channels, height, width] with the channels first; for channel-last rows "
                 "give image_shape [1, 36, 2]"),
])
def test_a_bad_image_shape_is_one_clear_error(tmp_path: Path, shape: list[int], message: str) -> None:
    csv = image_csv(tmp_path, 2, n=30)
    with pytest.raises(ConfigError) as caught:
        UserClassificationTask(dataset=str(csv), target="label", image_shape=shape, **FAST)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_cli_and_api_take_both_image_shape_forms(tmp_path: Path, capsys) -> None:
    assert parse_image_shape("3x8x8") == [3, 8, 8] == parse_image_shape("3,8,8")
    assert parse_image_shape("8,8") == [8, 8] == parse_image_shape((8, 8))
    csv = image_csv(tmp_path, 2, n=60)
    base = ["suite", "init", "--data", str(csv), "--target", "label", "--noise", "symmetric:0.2", "--model", "cnn"]
    for i, text in enumerate(["2x6x6", "2,6,6"]):
        out = tmp_path / f"s{i}.toml"
        assert main([*base, "--image-shape", text, "-o", str(out)]) == 0
        assert load_suite(out).tasks[0].task.image_layout() == (2, SIDE, SIDE)
    assert main([*base, "--image-shape", "6,6", "-o", str(tmp_path / "bad.toml")]) == 2
    assert main([*base, "--image-shape", "2xsix", "-o", str(tmp_path / "bad.toml")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert "image_shape [2, 6, 6]" in err[-2] and "--image-shape must be H,W or C,H,W" in err[-1]
    assert not (tmp_path / "bad.toml").exists()
    # one-channel [H, W] still works on one-channel rows
    one = image_csv(tmp_path, 1, n=60)
    task = UserClassificationTask(dataset=str(one), target="label", image_shape=[SIDE, SIDE], **FAST)
    assert task.image_layout() == (1, SIDE, SIDE) and task.data(0).x_train.shape[1:] == (1, SIDE, SIDE)


def test_api_score_runs_a_two_channel_suite_end_to_end(tmp_path: Path, monkeypatch) -> None:
    import lossforge

    monkeypatch.chdir(tmp_path)
    x, y = images(90, 2)
    rows = lossforge.score(["(y_pred - y_real)**2"], data=(x, y), noise="symmetric:0.2", image_shape="2x6x6",
                           model="cnn", procedures="plain,augment", epochs=1, seeds=[0], baselines=["cross_entropy"],
                           jobs=1)
    assert [r.status for r in rows] == ["complete", "complete"]
    suite = load_suite(next((tmp_path / "runs" / "suites").glob("*.toml")))
    assert [t.task.image_layout() for t in suite.tasks] == [(2, SIDE, SIDE)] * 2


# --- scaling fitted on the training rows only -----------------------------------------------------------------


def tabular(n: int = 120) -> "pd.DataFrame":
    rng = np.random.default_rng(3)
    y = np.arange(n) % 3
    frame = pd.DataFrame({"a": rng.integers(0, 100, n) + 40 * y, "b": rng.integers(0, 50, n), "label": y})
    return frame


def test_a_test_row_value_never_shapes_the_training_inputs(tmp_path: Path) -> None:
    frame = tabular()
    settings = {"target": "label", "noise": "symmetric", "noise_rate": 0.2, "epochs": 1, "hidden": [8]}
    first = UserClassificationTask(dataset=str(_csv(frame, tmp_path / "a.csv")), **settings)
    train, test = first.split_rows(5)
    row = int(test[0])
    extreme, tame = frame.copy(), frame.copy()
    extreme.loc[row, "a"] = 1e6
    tame.loc[row, "a"] = -1e6
    split_a = UserClassificationTask(dataset=str(_csv(extreme, tmp_path / "b.csv")), **settings).data(5)
    split_b = UserClassificationTask(dataset=str(_csv(tame, tmp_path / "c.csv")), **settings).data(5)
    assert torch.equal(split_a.x_train, split_b.x_train)  # the training tensor ignores the test row
    assert torch.equal(split_a.y_train, split_b.y_train)
    # the training rows span [0, 1] exactly; the extreme test row is clipped to the edge
    assert split_a.x_train.min() == 0.0 and split_a.x_train.max() == 1.0
    position = int((test == row).nonzero())
    assert split_a.x_test[position, 0] == 1.0 and split_b.x_test[position, 0] == 0.0
    # inputs are aligned with their rows: each test row is its raw values scaled by the training range
    raw = frame[["a", "b"]].to_numpy(dtype=np.float64)
    low, span = fit_range(raw[train.numpy()])
    expected = torch.tensor(np.clip((raw[test.numpy()] - low) / span, 0, 1), dtype=torch.float32)
    assert torch.equal(first.data(5).x_test, expected)
    # the scaling is fitted per seed: another seed trains on other rows and scales by their range
    assert not torch.equal(first.split_rows(6)[0].sort().values, train.sort().values)


def test_a_trusted_subset_is_left_out_of_the_scaling(tmp_path: Path) -> None:
    frame = tabular().assign(ok=lambda f: (np.arange(len(f)) % 4 == 0).astype(int))
    settings = {"target": "label", "trusted": "ok", "epochs": 1, "hidden": [8]}
    changed = frame.copy()
    changed.loc[0, "b"] = 1e9  # row 0 is trusted: a test row
    a = UserClassificationTask(dataset=str(_csv(frame, tmp_path / "a.csv")), **settings).data(0)
    b = UserClassificationTask(dataset=str(_csv(changed, tmp_path / "b.csv")), **settings).data(0)
    assert torch.equal(a.x_train, b.x_train) and not torch.equal(a.x_test, b.x_test)


def _csv(frame, path: Path) -> Path:
    frame.to_csv(path, index=False)
    return path


def test_a_shape_that_looks_channel_last_gets_a_hint(tmp_path: Path) -> None:
    csv = image_csv(tmp_path, 2)  # 72 values a row: [2, 6, 6] channel-major, or [6, 6, 2] read literally
    hint = r"give image_shape \[2, 6, 6\] and store each row channel by channel"
    with pytest.raises(ConfigError, match=r"too many for 2px images; use fewer; if the rows are 6x6 images with 2 channels, " + hint):
        data_suite_spec(csv, "label", noise="symmetric:0.2", image_shape="6,6,2", model="cnn")  # 2 pooling blocks
    rgba = tmp_path / "rgba.csv"  # 8x8 RGBA rows read as [8, 8, 4]: two pooling blocks fit, so only a notice
    frame = pd.DataFrame(np.random.default_rng(0).uniform(0, 255, (60, 256)), columns=[f"p{i}" for i in range(256)])
    frame.assign(label=np.arange(60) % 3).to_csv(rgba, index=False)
    notice = r"lossforge: image_shape \[8, 8, 4\] reads each row as 8 channels of 8x4 pixels; .*" \
             r"give image_shape \[4, 8, 8\] and store each row channel by channel"
    spec = data_suite_spec(rgba, "label", noise="symmetric:0.2", image_shape="8,8,4", model="cnn",
                           procedures="plain,augment")
    with pytest.warns(UserWarning, match=notice) as caught:
        suite_from_spec(spec).warn_notices()
    assert len(caught) == 1  # one notice, though two tasks read the rows so
    with pytest.warns(UserWarning, match=notice):  # and when suite init writes such a suite
        assert main(["suite", "init", "--data", str(rgba), "--target", "label", "--noise", "symmetric:0.2",
                     "--image-shape", "8,8,4", "--model", "cnn", "-o", str(tmp_path / "init.toml")]) == 0
    # a suite file written by hand gets it too, when a search starts on it
    toml = tmp_path / "mine.toml"
    toml.write_text(f'name = "mine"\nseeds = [0]\n\n[[tasks]]\nname = "rgba"\ntype = "user"\n'
                    f'settings = {{ dataset = "{rgba}", target = "label", image_shape = [8, 8, 4], model = "cnn", '
                    f'noise = "symmetric", noise_rate = 0.2 }}\n')
    with pytest.warns(UserWarning, match=notice):
        Search.create(tmp_path / "run.db", SearchConfig(suite=str(toml), population=4, jobs=1,
                                                        executor="serial")).close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the channel-first reading of the same rows is not questioned
        suite_from_spec(data_suite_spec(csv, "label", noise="symmetric:0.2", image_shape="2,6,6",
                                        model="cnn")).warn_notices()


def test_the_cli_prints_a_lossforge_notice_as_one_line() -> None:
    from lossforge.cli import _warning_line

    assert _warning_line(UserWarning("lossforge: image_shape [8, 8, 4] ..."), UserWarning, "x.py", 3) == \
        "lossforge: image_shape [8, 8, 4] ...\n"
    assert "x.py:3" in _warning_line(UserWarning("other"), UserWarning, "x.py", 3, "")  # others as Python shows them
