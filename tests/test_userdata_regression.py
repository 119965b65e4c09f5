"""Regression on your own data: user model factories trained K at once with torch.func, and the bundled
regression task's purified run (noise model from trusted or calibration rows, target shift removed)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lossforge.cli import main
from lossforge.conformance import check_task
from lossforge.data_suite import data_suite_spec, parse_regression_noise
from lossforge.errors import ConfigError
from lossforge.scoring import make_loss
from lossforge.tasks.user import UserRegressionTask

pd = pytest.importorskip("pandas")
FEATURES = ["a", "b", "c"]
NORM = "tests.user_models:norm_mlp"  # Linear - LayerNorm - GELU - Linear; the classification factory contract


def _csv(tmp_path: Path, offset: float = 0.0, skewed: bool = False) -> Path:
    """A smooth nonlinear target ``clean``; ``y`` = clean + ``offset`` + small noise on the untrusted rows.
    ``skewed``: a curve a linear fit misses by a skewed error (its median residual is not zero)."""
    rng = np.random.default_rng(5)
    n = 300
    x = rng.uniform(-2, 2, (n, 3))
    clean = x[:, 0] + (0.5 * x[:, 1] ** 2 if skewed else 0.5 * np.sin(2 * x[:, 1]))
    ok = rng.random(n) < 0.3
    noisy = clean + np.where(ok, 0.0, offset + 0.1 * rng.normal(size=n))
    frame = pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "y": noisy, "clean": clean, "ok": ok.astype(int)})
    path = tmp_path / "reg.csv"
    frame.to_csv(path, index=False)
    return path


def _injected(tmp_path: Path, **extra) -> UserRegressionTask:
    """Clean targets with injected biased Gaussian noise: a constant offset of one target deviation."""
    settings = {"target": "clean", "features": FEATURES, "noise": "gaussian", "noise_std": 0.3, "noise_mean": 1.0,
                "steps": 60, "lr": 0.01, **extra}
    return UserRegressionTask(dataset=str(_csv(tmp_path)), **settings)


def _losses(*names):
    return [make_loss(n, "regression") for n in names]


def _same(a, b) -> bool:
    return a.score == b.score and a.metrics == b.metrics and a.status == b.status and a.reason == b.reason


# --- the purified run ----------------------------------------------------------------------------------------


def test_purification_removes_an_injected_offset(tmp_path: Path) -> None:
    task = _injected(tmp_path, steps=150)
    assert task.purify is True  # on by default: injected noise with calibration rows
    model = task.noise_model(0)
    # the offset (in target deviations) within 3 standard errors of a median of 32 calibration residuals
    assert model.target_shift == pytest.approx(1.0, abs=3 * math.sqrt(math.pi / 2) * 0.3 / math.sqrt(32))
    mse = task.evaluate(_losses("mse"), seed=0)[0]
    assert mse.metrics["purified"] == 1.0
    assert mse.metrics["rmse_purified"] < 0.5 * mse.metrics["rmse_noisy"]  # the bias dominates the noisy run
    assert mse.score == pytest.approx(-0.5 * (mse.metrics["rmse_noisy"] + mse.metrics["rmse_purified"]))


@pytest.mark.parametrize("skewed", [False, True])
def test_purification_from_trusted_rows(tmp_path: Path, skewed: bool) -> None:
    csv = _csv(tmp_path, offset=1.5, skewed=skewed)
    task = UserRegressionTask(dataset=str(csv), features=FEATURES, trusted="ok", steps=150)
    assert task.purify is True
    report = task.noise_estimate()
    frame = pd.read_csv(csv)
    # in the standardised units the task trains in: the training (untrusted) rows' deviation
    offset = 1.5 / float(np.std(frame.loc[frame.ok == 0, "y"]))
    assert report["shift"] == report["bias"] == pytest.approx(offset, abs=0.08)  # found, with the ridge's own
    # skewed error removed (without that the skewed curve's estimate is 0.13 low)
    mse = task.evaluate(_losses("mse"), seed=0)[0]
    assert mse.metrics["rmse_purified"] < 0.6 * mse.metrics["rmse_noisy"]


def test_without_trusted_or_calibration_rows_the_purified_run_is_off(tmp_path: Path) -> None:
    task = _injected(tmp_path, n_calibration=0)
    assert task.settings()["purify"] is False and task.noise_model(0) is None
    result = task.evaluate(_losses("mse"), seed=0)[0]
    assert result.metrics["purify"] == 0.0 and result.metrics["purified"] == 0.0
    assert result.metrics["rmse_purified"] == result.metrics["rmse_noisy"] == -result.score
    off = _injected(tmp_path, purify=False)  # switched off by hand: the same noisy run
    assert _same(off.evaluate(_losses("mse"), seed=0)[0], result)
    with pytest.raises(ConfigError, match="purify needs a noise model"):
        _injected(tmp_path, n_calibration=0, purify=True)


def test_an_insignificant_shift_trains_one_run(tmp_path: Path) -> None:
    task = _injected(tmp_path, noise_mean=0.0, noise_std=0.0, noise="outliers", outlier_fraction=0.0)
    assert task.noise_model(0).target_shift == 0.0  # zero residuals: nothing significant to remove
    result = task.evaluate(_losses("mse"), seed=0)[0]
    assert result.metrics["purify"] == 1.0 and result.metrics["purified"] == 0.0
    assert result.metrics["rmse_purified"] == result.metrics["rmse_noisy"]


def test_same_seed_same_result_and_batch_equals_alone(tmp_path: Path) -> None:
    task = _injected(tmp_path)
    alone = task.evaluate(_losses("mse"), seed=2)[0]
    batch = task.evaluate(_losses("mae", "mse", "huber"), seed=2)
    assert _same(batch[1], alone) and _same(task.evaluate(_losses("mse"), seed=2)[0], alone)  # bit-identical
    assert len({r.score for r in batch}) == 3
    assert task.evaluate(_losses("mse"), seed=3)[0].score != alone.score
    assert check_task(task).passed


# --- the user's model -----------------------------------------------------------------------------------------


def test_user_model_trained_batched_is_bit_identical_to_alone(tmp_path: Path) -> None:
    task = _injected(tmp_path, model=NORM)
    alone = task.evaluate(_losses("mse"), seed=1)[0]
    batch = task.evaluate(_losses("mae", "mse", "huber", "mse"), seed=1)
    assert _same(batch[1], alone) and _same(batch[3], alone)  # bit-identical; common random numbers
    assert len({r.score for r in batch}) == 3 and alone.metrics["purified"] == 1.0
    builtin = _injected(tmp_path).evaluate(_losses("mse"), seed=1)[0]
    assert builtin.score != alone.score  # the factory's module really trained, not the built-in MLP
    assert alone.metrics["rmse_purified"] < alone.metrics["rmse_noisy"]
    report = check_task(task)  # settings round-trip, determinism, NaN isolation, worst score on failure
    assert report.passed, "\n".join(report.lines())


def test_random_layers_are_seeded_per_evaluation(tmp_path: Path) -> None:
    task = _injected(tmp_path, model="tests.user_models:dropout_mlp")
    torch.manual_seed(123)
    first = task.evaluate(_losses("mse", "mae"), seed=0)
    torch.manual_seed(999)  # the caller's generator does not leak in
    second = task.evaluate(_losses("mse", "mae"), seed=0)
    assert all(_same(a, b) for a, b in zip(first, second))
    assert _same(task.evaluate(_losses("mse"), seed=0)[0], first[0])


def test_an_exploding_loss_is_frozen_without_poisoning_the_others(tmp_path: Path) -> None:
    task = _injected(tmp_path, model=NORM)

    def exploding(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return 1e30 * (pred - target) ** 2

    def nan(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (pred - target) * float("nan")

    alone = task.evaluate(_losses("mse"), seed=0)[0]
    results = task.evaluate([exploding, make_loss("mse", "regression"), nan], seed=0)
    assert results[0].status == "failed" and "gradient" in results[0].reason
    assert results[2].status == "failed" and results[2].reason
    assert results[0].score == results[2].score == UserRegressionTask.worst_score
    assert _same(results[1], alone)


def test_a_module_vmap_refuses_is_trained_in_a_loop(tmp_path: Path) -> None:
    task = _injected(tmp_path, model="tests.user_models:gated_mlp")
    with pytest.warns(RuntimeWarning, match="vmap cannot batch tests.user_models:gated_mlp"):
        batch = task.evaluate(_losses("mae", "mse"), seed=0)
    alone = task.evaluate(_losses("mse"), seed=0)[0]
    assert _same(batch[1], alone) and batch[0].status == "complete"


@pytest.mark.parametrize("model, message", [
    ("tests.user_models:broken", "raised ValueError: this factory always fails"),
    ("tests.user_models:not_a_module", "not a torch nn.Module"),
    ("tests.user_models:wrong_width", "to [2, 3]; a regression model must give [N, 1]"),
    ("tests.no_such_module:f", "cannot import module 'tests.no_such_module'"),
])
def test_a_bad_factory_is_one_line_and_exit_2(tmp_path: Path, capsys, model: str, message: str) -> None:
    csv = _csv(tmp_path)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        UserRegressionTask(dataset=str(csv), features=FEATURES, trusted="ok", model=model)
    rc = main(["--runs-dir", str(tmp_path / "runs"), "search", "--quiet", "--data", str(csv), "--target", "y",
               "--features", "a,b,c", "--problem", "regression", "--trusted", "ok", "--model", model])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "runs" / "suites").exists() or not list((tmp_path / "runs" / "suites").iterdir())


def test_cnn_and_bad_models_are_refused_for_regression(tmp_path: Path) -> None:
    csv = _csv(tmp_path)
    with pytest.raises(ConfigError, match="built-in MLP or your factory"):
        data_suite_spec(csv, "y", problem="regression", trusted="ok", model="cnn")
    with pytest.raises(ConfigError, match="model must be 'mlp' or a factory"):
        UserRegressionTask(dataset=str(csv), trusted="ok", model="cnn")


# --- the suite builder, the CLI and the API -------------------------------------------------------------------


def test_regression_noise_takes_an_offset() -> None:
    assert parse_regression_noise("gaussian:0.5:1.0") == {"noise": "gaussian", "noise_std": 0.5, "noise_mean": 1.0}
    assert parse_regression_noise("gaussian:0.5") == {"noise": "gaussian", "noise_std": 0.5}
    assert parse_regression_noise("outliers:0.2") == {"noise": "outliers", "outlier_fraction": 0.2}
    for bad in ("gaussian:0.5:1:2", "outliers:0.2:1", "gaussian:x"):
        with pytest.raises(ConfigError, match="--noise"):
            parse_regression_noise(bad)


def test_cli_suite_init_writes_the_factory_and_purification(tmp_path: Path, capsys) -> None:
    from lossforge.scoring import load_suite

    out = tmp_path / "s.toml"
    rc = main(["suite", "init", "--data", str(_csv(tmp_path)), "--target", "clean", "--features", "a,b,c",
               "--problem", "regression", "--noise", "gaussian:0.3:1.0", "--model", NORM, "-o", str(out)])
    assert rc == 0, capsys.readouterr().err
    task = load_suite(out).tasks[0].task
    assert (task.model, task.noise_mean, task.purify, task.n_calibration) == (NORM, 1.0, True, 32)


def test_api_score_and_search_reach_the_factory(tmp_path: Path, monkeypatch) -> None:
    import lossforge

    monkeypatch.chdir(tmp_path)
    frame = pd.read_csv(_csv(tmp_path))
    data = (frame[FEATURES].to_numpy(), frame["clean"].to_numpy())
    options = {"problem": "regression", "noise": "gaussian:0.3:1.0", "model": NORM, "epochs": 5}
    rows = lossforge.score(["(y_pred - y_real)**2"], data=data, seeds=[0], baselines=["mse"], jobs=1, **options)
    assert rows[0].status == "complete" and math.isclose(rows[1].fitness, 1.0)
    assert rows[0].fitness == rows[1].fitness  # the same loss as mse, on the same models
    hof = lossforge.search(run="api", quiet=True, data=data, population=4, generations=1, jobs=1, validate_top=0,
                           **options)
    assert hof
    suites = list((tmp_path / "runs" / "suites").glob("*.toml"))
    assert len(suites) == 1 and NORM in suites[0].read_text()


def test_test_rows_never_shape_the_training_data(tmp_path: Path) -> None:
    path = _csv(tmp_path)
    frame = pd.read_csv(path)
    task = UserRegressionTask(dataset=str(path), target="clean", features=FEATURES, noise="gaussian",
                              noise_std=0.3, steps=10)
    train, test = task.split_rows(0)
    assert len(set(train) & set(test)) == 0 and len(train) + len(test) == len(frame)
    x_train, y_train, x_test, _ = task.data(0)
    row = int(test[0])  # one held-out row made extreme, in a feature and in the target
    frame.loc[row, "a"], frame.loc[row, "clean"] = 1e6, -1e6
    other = tmp_path / "extreme.csv"
    frame.to_csv(other, index=False)
    changed = UserRegressionTask(dataset=str(other), target="clean", features=FEATURES, noise="gaussian",
                                 noise_std=0.3, steps=10)
    assert np.array_equal(changed.split_rows(0)[0], train)
    x2, y2, x_test2, _ = changed.data(0)
    assert torch.equal(x2, x_train) and torch.equal(y2, y_train)  # same scaling, same standardisation
    assert x_test2[0, 0] == 1.0  # the extreme test value is clipped to the training range


@pytest.mark.parametrize("scale, message", [(1e300, "too large to standardise"), (0.0, "in every row"),
                                            (math.inf, "non-finite")])
def test_a_target_that_cannot_be_standardised_is_refused(tmp_path: Path, capsys, scale: float, message: str) -> None:
    """Targets standardised by a deviation that overflowed (1e300) or was 0 (constant) all became 0: the
    search ran on a target of zeros and printed scores for it; now one line and exit 2, nothing written."""
    frame = pd.read_csv(_csv(tmp_path))
    frame["y"] = frame["clean"] * scale + (1.0 if scale == 0.0 else 0.0) if math.isfinite(scale) else \
        frame["clean"].where(frame.index != 3, math.inf)
    frame.to_csv(tmp_path / "bad.csv", index=False)
    out = tmp_path / "s.toml"
    rc = main(["suite", "init", "--data", str(tmp_path / "bad.csv"), "--target", "y", "--features", "a,b,c",
               "--problem", "regression", "--noise", "gaussian:0.5", "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.count("\n") == 1, err
    assert not out.exists()


def test_non_finite_targets_of_the_test_file_are_refused(tmp_path: Path) -> None:
    frame = pd.read_csv(_csv(tmp_path))
    frame.loc[4, "clean"] = float("inf")  # NaN is refused on reading; inf was taken
    frame.to_csv(tmp_path / "test.csv", index=False)
    with pytest.raises(ConfigError, match="test.csv: target 'clean' has missing or non-finite"):
        _injected(tmp_path, test_data=str(tmp_path / "test.csv")).data(0)
