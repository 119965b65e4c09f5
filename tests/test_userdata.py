"""Search on your own data: files and in-memory inputs, class counts, label noise, trusted subsets, the open
task registry (module:Class plug-ins in workers and fresh processes) and the conformance check."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch

from lossforge.cli import main
from lossforge.conformance import RULES, assert_task_conforms, check_task
from lossforge.data_sources import encode_labels, infer_classes, materialize
from lossforge.errors import ConfigError
from lossforge.scoring import load_suite, make_loss, suite_from_spec
from lossforge.tasks.base import Task, TaskResult
from lossforge.tasks.registry import register_task, resolve, type_name
from lossforge.tasks.user import UserAugmentTask, UserClassificationTask, UserRegularizeTask, estimate_transition

pd = pytest.importorskip("pandas")
REPO = Path(__file__).resolve().parent.parent
FAST = {"epochs": 1, "hidden": [16]}


def table(n: int = 240, n_classes: int = 3, seed: int = 0, labels: list[str] | None = None):
    """Integer features (exact in every format), an ``id`` column identifying rows, and labels."""
    rng = np.random.default_rng(seed)
    centers = rng.integers(-50, 50, size=(n_classes, 3))
    y = np.arange(n) % n_classes
    x = (centers[y] + rng.integers(-20, 20, size=(n, 3))).astype(np.int64)
    frame = pd.DataFrame({"id": np.arange(n), "a": x[:, 0], "b": x[:, 1], "c": x[:, 2]})
    frame["label"] = [labels[i] for i in y] if labels else y
    return frame


def write_csv(frame, path: Path) -> Path:
    frame.to_csv(path, index=False)
    return path


def split_of(task: UserClassificationTask, seed: int = 3):
    s = task.data(seed)
    return [s.x_train, s.y_train, s.x_test, s.y_test]


def test_every_input_kind_gives_the_same_split_for_the_same_seed(tmp_path: Path) -> None:
    frame = table()
    x = frame[["id", "a", "b", "c"]].to_numpy()
    y = frame["label"].to_numpy()
    csv = write_csv(frame, tmp_path / "d.csv")
    npz = tmp_path / "d.npz"
    np.savez(npz, x=x, y=y)
    npy = tmp_path / "d.npy"
    np.save(npy, np.column_stack([x, y]))
    noise = {"noise": "symmetric", "noise_rate": 0.3, **FAST}
    sources = {"csv": (csv, "label"), "npz": (npz, "y"), "npy": (npy, "y")}
    memory = {"arrays": (x, y), "frame": frame[["id", "a", "b", "c", "label"]],
              "dataset": torch.utils.data.TensorDataset(torch.tensor(x, dtype=torch.float32), torch.tensor(y))}
    for name, data in memory.items():
        path, key, _ = materialize(data, tmp_path / "mem", target="label" if name == "frame" else None)
        sources[name] = (path, key)
    if _has("pyarrow"):
        frame.to_parquet(tmp_path / "d.parquet")
        sources["parquet"] = (tmp_path / "d.parquet", "label")
    splits = {name: split_of(UserClassificationTask(dataset=str(p), target=t, **noise)) for name, (p, t) in sources.items()}
    reference = splits.pop("csv")
    for name, split in splits.items():
        assert all(torch.equal(a, b) for a, b in zip(reference, split)), name
    other_seed = split_of(UserClassificationTask(dataset=str(csv), target="label", **noise), seed=4)
    assert not torch.equal(reference[3], other_seed[3]) or not torch.equal(reference[2], other_seed[2])
    # stratified: every class keeps round(0.3 * 80) = 24 test rows
    assert torch.bincount(reference[3]).tolist() == [24, 24, 24]


def _has(module: str) -> bool:
    try:
        __import__(module)
        return True
    except ImportError:
        return False


def test_string_labels_round_trip_through_the_stored_settings(tmp_path: Path) -> None:
    names = ["zebra", "cat", "emu"]
    frame = table(labels=names)
    csv = write_csv(frame, tmp_path / "s.csv")
    task = UserClassificationTask(dataset=str(csv), target="label", noise="pair", noise_rate=0.2, **FAST)
    assert task.classes == ("cat", "emu", "zebra")
    rebuilt = UserClassificationTask(**json.loads(json.dumps(task.settings())))
    assert rebuilt == task
    split = rebuilt.data(0)
    ids = rebuilt.split_rows(0)[1].numpy()  # the file rows held out (x/row alignment: test_userdata_images)
    decoded = [task.classes[i] for i in split.y_test.tolist()]
    assert decoded == frame["label"].to_numpy()[ids].tolist()
    assert encode_labels(np.array(decoded), task.classes, "x").tolist() == split.y_test.tolist()
    # a stored mapping is kept even if a later file orders differently
    assert infer_classes(np.array([3.0, 10.0, 2.0])) == ("2", "3", "10")


@pytest.mark.parametrize("n_classes", [2, 3, 20])
def test_class_count_comes_from_the_data(tmp_path: Path, n_classes: int) -> None:
    csv = write_csv(table(n=20 * n_classes, n_classes=n_classes), tmp_path / "c.csv")
    common = {"dataset": str(csv), "target": "label", "noise": "symmetric", "noise_rate": 0.2, **FAST}
    losses = [make_loss("cross_entropy", "classification"), make_loss("mae", "classification")]
    for cls, extra in ((UserClassificationTask, {}), (UserAugmentTask, {"augmentations": ["mixup", "noise"]}),
                       (UserRegularizeTask, {"label_smoothing": 0.1})):
        task = cls(**common, **extra)
        assert task.n_classes == n_classes and task.data(0).n_classes == n_classes
        results = task.evaluate(losses, seed=0)
        assert [r.status for r in results] == ["complete", "complete"]
        assert all(0.0 <= r.score <= 1.0 for r in results)


@pytest.mark.parametrize("kind, rate", [("symmetric", 0.4), ("pair", 0.3), ("asymmetric", 0.25)])
def test_injected_noise_hits_the_stated_rate_and_scoring_uses_clean_labels(tmp_path: Path, kind: str,
                                                                           rate: float) -> None:
    frame = table(n=400, labels=["a", "b", "c"])
    csv = write_csv(frame, tmp_path / "n.csv")
    flips = [["a", "b"], ["b", "c"], ["c", "a"]] if kind == "asymmetric" else []
    task = UserClassificationTask(dataset=str(csv), target="label", noise=kind, noise_rate=rate, flips=flips, **FAST)
    split = task.data(1)
    train_rows, test_rows = task.split_rows(1)  # the file rows behind the split
    clean = encode_labels(frame["label"].to_numpy(), task.classes, "x")

    def truth(rows: torch.Tensor) -> np.ndarray:
        return clean[rows.numpy()]

    wrong = (split.y_train.numpy() != truth(train_rows)).mean()
    assert wrong == pytest.approx(rate, abs=1.5 / len(split.y_train) * 3)
    assert (split.y_test.numpy() == truth(test_rows)).all()  # test labels stay clean
    if kind == "asymmetric":  # flips follow the class map only
        moved = split.y_train.numpy() != truth(train_rows)
        pairs = set(zip(truth(train_rows)[moved].tolist(), split.y_train.numpy()[moved].tolist()))
        assert pairs <= {(0, 1), (1, 2), (2, 0)}


def test_trusted_subset_recovers_a_known_transition_matrix(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    n, truth = 3000, np.array([[0.7, 0.3, 0.0], [0.0, 0.8, 0.2], [0.15, 0.0, 0.85]])
    clean = rng.integers(0, 3, n)
    x = np.array([[0, 0], [40, 0], [0, 40]])[clean] + rng.normal(0, 3, (n, 2))
    noisy = np.array([rng.choice(3, p=truth[c]) for c in clean])
    trusted = rng.random(n) < 0.2
    frame = pd.DataFrame({"u": x[:, 0], "v": x[:, 1], "label": np.where(trusted, clean, noisy), "ok": trusted})
    csv = write_csv(frame, tmp_path / "t.csv")
    task = UserClassificationTask(dataset=str(csv), target="label", trusted="ok", **FAST)
    split = task.data(0)
    assert len(split.y_test) == trusted.sum() and len(split.y_train) == n - trusted.sum()
    estimate = task.noise_estimate()
    assert np.abs(estimate - truth).max() < 0.06
    assert np.allclose(estimate.sum(axis=1), 1.0)
    # a wrong estimator would not do: a matrix from shuffled noisy labels is far from it
    shuffled = estimate_transition(split.x_train.numpy(), rng.permutation(split.y_train.numpy()),
                                   split.x_test.numpy(), split.y_test.numpy(), 3)
    assert np.abs(shuffled - truth).max() > 0.3
    # every loss is scored on the trusted rows: a result per loss, the clean accuracy
    results = task.evaluate([make_loss("cross_entropy", "classification")], seed=0)
    assert results[0].status == "complete" and results[0].metrics["acc_clean"] == results[0].score


def _cli(args: list[str], capsys) -> tuple[int, str, str]:
    rc = main(args)
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("frame_edit, options, message", [
    (None, ["--target", "nope", "--noise", "symmetric:0.4"], "no target column 'nope'"),
    (lambda f: f.assign(a=["x"] * len(f)), ["--target", "label", "--noise", "symmetric:0.4"],
     "feature column 'a' is not numeric"),
    (lambda f: f.assign(label=0), ["--target", "label", "--noise", "symmetric:0.4"], "single class"),
    (lambda f: f.assign(ok=0), ["--target", "label", "--trusted", "ok"], "marks no rows"),
    (None, ["--target", "label"], "say how the labels are noisy"),
    (None, ["--target", "label", "--noise", "gaussian:0.4"], "--noise must be KIND:RATE"),
    (None, ["--target", "label", "--noise", "asymmetric:0.3"], "class map"),
    # features beyond float32 became inf when stored, with a RuntimeWarning, and the suite was written
    (lambda f: f.assign(a=f["a"] * 1e300), ["--target", "label", "--noise", "symmetric:0.4"],
     "feature column 'a' has values beyond float32's range"),
    (lambda f: f.iloc[:0], ["--target", "label", "--noise", "symmetric:0.4"], "no rows of data"),  # was "single class []"
    # a rate of nan or below 0 was taken for "no noise": "say how the labels are noisy"
    (None, ["--target", "label", "--noise", "symmetric:nan"], "noise_rate must be a finite number"),
    (None, ["--target", "label", "--noise", "symmetric:-0.1"], "noise_rate must be a finite number"),
])
def test_bad_own_data_is_one_line_and_exit_2_and_nothing_is_written(tmp_path: Path, capsys, frame_edit, options,
                                                                     message) -> None:
    frame = table()
    frame = frame_edit(frame) if frame_edit else frame
    csv = write_csv(frame, tmp_path / "bad.csv")
    before = csv.read_bytes()
    out_file = tmp_path / "s.toml"
    for command in (["search", "--quiet"], ["suite", "init", "-o", str(out_file)]):
        rc, _, err = _cli(["--runs-dir", str(tmp_path / "runs"), *command, "--data", str(csv), *options], capsys)
        assert rc == 2 and message in err and err.count("\n") == 1, err
    assert not out_file.exists() and not (tmp_path / "runs").exists()
    assert csv.read_bytes() == before


@pytest.mark.parametrize("arrays, message", [
    (dict(x=np.zeros((0, 3)), y=np.zeros(0)), "array 'x' has no rows"),  # was a ValueError traceback
    (dict(x=np.float64(3.0), y=np.zeros(1)), "array 'x' is a single number"),  # was a TypeError traceback
    (dict(x=np.zeros((10, 3)), y=np.zeros((10, 2))), "array 'y' has shape (10, 2)"),  # was "a single class"
    (dict(x=np.zeros((10, 3)), y=np.arange(10) % 2, features=np.array(["a"])), "names 1 column(s) but 'x' has 3"),
    (dict(x=np.random.default_rng(0).random((10, 3)), y=np.arange(10) % 2, t=np.ones(4, bool)), "4 trusted flags"),
])
def test_malformed_npz_arrays_are_one_line_and_exit_2(tmp_path: Path, capsys, arrays: dict, message: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    out = tmp_path / "s.toml"
    how = ["--trusted", "t"] if "t" in arrays else ["--noise", "symmetric:0.4"]
    rc, _, err = _cli(["suite", "init", "--data", str(path), "--target", "y", *how, "-o", str(out)], capsys)
    assert rc == 2 and message in err and err.count("\n") == 1, err
    assert not out.exists()


def test_npz_with_one_feature_per_row_or_a_label_column_still_reads(tmp_path: Path) -> None:
    from lossforge.data_sources import read_table

    np.savez(tmp_path / "a.npz", x=np.arange(6.0), y=(np.arange(6) % 2)[:, None])
    table = read_table(tmp_path / "a.npz", "y")
    assert table.x.shape == (6, 1) and list(table.y) == [0, 1, 0, 1, 0, 1]


def test_suite_files_refuse_unknown_keys(tmp_path: Path) -> None:
    bad = tmp_path / "typo.toml"
    bad.write_text('sed = [0]\n[[tasks]]\nname = "r"\ntype = "regression"\n')
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['sed'\]; valid keys: budget, confirm_seeds, description, name, seeds"):
        load_suite(bad)


def test_suite_init_writes_an_editable_suite_that_loads_and_round_trips(tmp_path: Path, capsys) -> None:
    frame = table(labels=["x", "y", "z"])
    csv = write_csv(frame, tmp_path / "d.csv")
    out_file = tmp_path / "mine.toml"
    rc, out, _ = _cli(["suite", "init", "--data", str(csv), "--target", "label", "--noise", "pair:0.3",
                       "--procedures", "plain,augment,regularize", "--epochs", "2", "-o", str(out_file)], capsys)
    assert rc == 0 and "suite written" in out
    suite = load_suite(out_file)
    assert [t.name for t in suite.tasks] == ["plain", "augment", "regularize"]
    assert all(t.task.classes == ("x", "y", "z") and t.task.epochs == 2 for t in suite.tasks)
    assert suite_from_spec(json.loads(json.dumps(suite.spec()))).hash == suite.hash
    rc, _, err = _cli(["suite", "init", "--data", str(csv), "--target", "label", "--noise", "pair:0.3",
                       "-o", str(out_file)], capsys)
    assert rc == 2 and "exists" in err


def test_data_and_a_suite_exclude_each_other(tmp_path: Path, capsys) -> None:
    """--data with --suite NAME scored on the data's suite and dropped the named one without a word."""
    import lossforge

    csv = write_csv(table(), tmp_path / "d.csv")
    for command in (["search", "--quiet", "--run", "r"], ["score", "y_pred - y_real"]):
        rc, _, err = _cli(["--runs-dir", str(tmp_path / "runs"), *command, "--suite", "quick", "--data", str(csv),
                           "--target", "label", "--noise", "symmetric:0.4"], capsys)
        assert rc == 2 and "exclude each other" in err and err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists()
    with pytest.raises(ConfigError, match="exclude each other"):
        lossforge.score(["y_pred - y_real"], suite="quick", data=str(csv), target="label", noise="symmetric:0.4")


def test_suite_init_never_writes_over_the_data_it_reads(tmp_path: Path, capsys) -> None:
    """`suite init --data d.csv -o d.csv --force` replaced the data file with the suite (the data was lost)."""
    csv = write_csv(table(), tmp_path / "d.csv")
    test = write_csv(table(seed=1), tmp_path / "t.csv")
    before = {p: p.read_bytes() for p in (csv, test)}
    for out in (csv, test, tmp_path / "." / "d.csv"):
        rc, _, err = _cli(["suite", "init", "--data", str(csv), "--target", "label", "--noise", "symmetric:0.4",
                           "--test-data", str(test), "-o", str(out), "--force"], capsys)
        assert rc == 2 and "it is the input being read" in err and err.count("\n") == 1, err
    rc, _, err = _cli(["suite", "init", "--data", str(csv), "--target", "label", "--noise", "symmetric:0.4",
                       "-o", str(tmp_path)], capsys)
    assert rc == 2 and "is a directory" in err
    assert {p: p.read_bytes() for p in (csv, test)} == before


def test_a_changed_data_file_is_refused_when_the_task_is_rebuilt(tmp_path: Path) -> None:
    csv = write_csv(table(), tmp_path / "d.csv")
    settings = UserClassificationTask(dataset=str(csv), target="label", noise="pair", noise_rate=0.2).settings()
    write_csv(table(seed=9), csv)
    with pytest.raises(ConfigError, match="changed since this task was set up"):
        UserClassificationTask(**settings)


def test_api_search_and_score_on_arrays(tmp_path: Path, monkeypatch) -> None:
    import lossforge

    monkeypatch.chdir(tmp_path)
    frame = table(n=120)
    x, y = frame[["a", "b", "c"]].to_numpy(), frame["label"].to_numpy()
    rows = lossforge.score(["(y_pred - y_real)**2"], data=(x, y), noise="symmetric:0.3", epochs=1, seeds=[0],
                           baselines=["cross_entropy"], jobs=1)
    assert rows[0].status == "complete" and rows[1].name == "cross_entropy" and math.isclose(rows[1].fitness, 1.0)
    hof = lossforge.search(run="api", quiet=True, data=(x, y), noise="symmetric:0.3", epochs=1, population=4,
                           generations=1, jobs=1, validate_top=0)
    assert hof and (tmp_path / "runs" / "api.db").exists() and list((tmp_path / "runs" / "data").glob("*.npz"))


# --- plug-in tasks ----------------------------------------------------------------------------------------

PLUGIN = textwrap.dedent('''
    from dataclasses import dataclass
    from typing import ClassVar
    from lossforge.tasks.regression import RegressionTask

    @dataclass
    class SmallCubic(RegressionTask):
        """A plug-in task: the cubic regression, renamed and made small."""
        kind_name: ClassVar[str] = "small_cubic"
        steps: int = 40
        n_train: int = 32
        n_test: int = 32
''')


def _run(args: list[str], cwd: Path, pythonpath: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": pythonpath, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "lossforge.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_module_class_task_runs_with_two_workers_and_reopens_in_a_fresh_process(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "my_tasks.py").write_text(PLUGIN)
    (tmp_path / "s.toml").write_text('name = "plug"\nseeds = [0, 1]\n[[tasks]]\nname = "cubic"\n'
                                     'type = "my_tasks:SmallCubic"\n')
    path = f"{plugins}{os.pathsep}{REPO}"
    done = _run(["search", "--suite", "s.toml", "--population", "4", "--generations", "1", "--jobs", "2",
                 "--run", "p", "--validate-top", "1", "--quiet"], tmp_path, path)
    assert done.returncode == 0, done.stderr
    shown = _run(["show", "runs/p.db", "--top", "2"], tmp_path, path)
    assert shown.returncode == 0 and "rank" in shown.stdout, shown.stderr
    assert _run(["resume", "runs/p.db", "--quiet"], tmp_path, path).returncode == 0
    assert _run(["report", "runs/p.db", "-o", "rep"], tmp_path, path).returncode == 0
    missing = _run(["show", "runs/p.db"], tmp_path, str(REPO))  # the plug-in's folder is not on the path
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    assert "cannot import module 'my_tasks'" in missing.stderr


def test_register_task_and_type_names() -> None:
    @dataclass
    class Registered(Toy):
        kind_name: ClassVar[str] = "toy_registered_for_test"

    register_task(Registered)
    assert resolve("toy_registered_for_test") is Registered
    assert type_name(Registered) == f"{__name__}:{Registered.__qualname__}"  # stored by path, not by name
    assert type_name(resolve("label_noise")) == "label_noise"
    with pytest.raises(ConfigError, match="already taken"):
        register_task(Toy, "label_noise")
    with pytest.raises(ConfigError, match="not a known name nor an import path"):
        resolve("not a path:x")


# --- the conformance check -------------------------------------------------------------------------------


@dataclass
class Toy(Task):
    """A conformant toy task: K batched scalar models w*x fit by gradient steps on the same data."""

    kind_name: ClassVar[str] = "toy"
    problem: ClassVar[str] = "regression"
    worst_score: ClassVar[float] = -1e9
    steps: int = 20

    def init(self, n: int, gen: torch.Generator) -> torch.Tensor:
        return torch.zeros(n)

    def lr(self, n: int) -> float:
        return 0.1

    def data(self, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(64, generator=gen)
        return x, 2 * x + 0.1 * torch.randn(64, generator=gen)

    def on_failure(self, w: torch.Tensor, k: int) -> None:
        pass

    def failed(self, reason: str) -> TaskResult:
        return TaskResult.failed(reason, self.worst_score)

    def evaluate(self, losses, seed, device="cpu"):
        gen = torch.Generator().manual_seed(seed)
        x, y = self.data(gen)
        w = self.init(len(losses), gen)
        failures: list[str | None] = [None] * len(losses)
        for _ in range(self.steps):
            for k, loss in enumerate(losses):
                if failures[k]:
                    continue
                wk = w[k].clone().requires_grad_(True)
                value = loss(wk * x, y).mean()
                if not torch.isfinite(value):
                    failures[k] = "non-finite loss"
                    self.on_failure(w, k)
                    continue
                value.backward()
                w[k] = w[k] - self.lr(len(losses)) * wk.grad
        return [self.failed(f) if f else TaskResult(-float(((w[k] * x - y) ** 2).mean()))
                for k, f in enumerate(failures)]


@dataclass
class NoRoundTrip(Toy):
    def settings(self):
        return {}


@dataclass
class Unseeded(Toy):
    def data(self, gen):
        x = torch.randn(64, generator=gen)
        return x, 2 * x + 0.5 * torch.randn(64)  # the global generator: differs call to call


@dataclass
class OwnInit(Toy):
    def init(self, n, gen):
        return torch.randn(n, generator=gen)  # model k's start depends on k: copies differ


@dataclass
class BatchScaled(Toy):
    def lr(self, n):
        return 0.1 / n  # the step depends on K


@dataclass
class Poisoned(Toy):
    def on_failure(self, w, k):
        w[:] = float("nan")  # one bad loss wrecks every model


@dataclass
class NanScore(Toy):
    def failed(self, reason):
        return TaskResult(float("nan"), {}, "failed", reason)


@dataclass
class FalselyScaleFree(Toy):
    @property
    def scale_free(self) -> bool:
        return True  # plain gradient steps grow with the loss's scale: the claim is false


@pytest.mark.parametrize("cls, rule, message", [
    (NoRoundTrip, "settings_round_trip", "is not equal to the task"),
    (FalselyScaleFree, "scale_free_claim", "return False where the optimiser"),
    (Unseeded, "determinism", "derive every random draw from seed"),
    (OwnInit, "common_random_numbers", "two copies of one loss"),
    (BatchScaled, "batch_independence", "must not depend on K"),
    (Poisoned, "nan_isolation", "beside a NaN loss"),
    (NanScore, "worst_score_on_failure", "give it the task's worst_score"),
])
def test_check_task_names_the_broken_rule(cls, rule: str, message: str) -> None:
    report = check_task(cls, {"steps": 5})
    outcome = {r: (ok, msg) for r, ok, msg in report.results}
    assert not report.passed and not outcome[rule][0] and message in outcome[rule][1]
    if cls is BatchScaled:
        assert outcome["common_random_numbers"][0]  # copies still agree: only the K-dependence is caught
    if cls is NanScore:
        assert outcome["nan_isolation"][0]
    with pytest.raises(AssertionError, match=rule):
        assert_task_conforms(cls, {"steps": 5})


def test_check_task_passes_on_a_conformant_task_and_every_builtin(tmp_path: Path) -> None:
    assert check_task(Toy, {"steps": 5}).passed
    small = {"epochs": 1, "n_train": 120, "hidden": [16]}
    csv = write_csv(table(), tmp_path / "d.csv")
    for kind, settings in [("regression", {"steps": 30, "n_train": 32, "n_test": 32}), ("label_noise", small),
                           ("augment", small), ("adversarial", {**small, "epochs": 1}),
                           ("regularize", small),
                           ("user", {**small, "dataset": str(csv), "target": "label", "noise": "pair"}),
                           ("user_adversarial", {**small, "dataset": str(csv), "target": "label", "noise": "pair"})]:
        report = check_task(kind, settings)
        assert report.passed, "\n".join(report.lines())
    assert len(RULES) == 8


# --- the user's own model, K copies trained at once with torch.func ------------------------------------------


def _model_task(tmp_path: Path, model: str, **extra):
    csv = write_csv(table(n=150), tmp_path / "m.csv")
    return UserClassificationTask(dataset=str(csv), target="label", noise="symmetric", noise_rate=0.3, epochs=3,
                                  model=model, **extra)


def test_user_model_trained_batched_is_bit_identical_to_alone(tmp_path: Path) -> None:
    task = _model_task(tmp_path, "tests.user_models:norm_mlp")
    specs = ["mae", "cross_entropy", "gce", ["minus", "y_real", "y_pred"]]
    alone = task.evaluate([make_loss("cross_entropy", "classification")], seed=1)[0]
    batch = task.evaluate([make_loss(s, "classification") for s in specs], seed=1)
    assert batch[1].score == alone.score and batch[1].metrics == alone.metrics  # bit-identical
    assert len({r.score for r in batch}) > 1  # the losses really trained different models
    again = task.evaluate([make_loss("cross_entropy", "classification")], seed=1)[0]
    assert again.score == alone.score
    report = check_task(task)  # determinism, common random numbers, a NaN loss frozen with a reason
    assert report.passed, "\n".join(report.lines())


def test_a_module_vmap_refuses_is_trained_in_a_loop_with_a_notice(tmp_path: Path) -> None:
    task = _model_task(tmp_path, "tests.user_models:gated_mlp")
    with pytest.warns(RuntimeWarning, match="vmap cannot batch tests.user_models:gated_mlp"):
        batch = task.evaluate([make_loss(s, "classification") for s in ("mae", "cross_entropy")], seed=0)
    alone = task.evaluate([make_loss("cross_entropy", "classification")], seed=0)[0]
    assert batch[1].score == alone.score and batch[0].status == "complete"


@pytest.mark.parametrize("model, message", [
    ("tests.user_models:broken", "raised ValueError: this factory always fails"),
    ("tests.user_models:not_a_module", "not a torch nn.Module"),
    ("tests.no_such_module:f", "cannot import module 'tests.no_such_module'"),
])
def test_a_bad_model_factory_is_one_line_and_exit_2(tmp_path: Path, capsys, model: str, message: str) -> None:
    csv = write_csv(table(), tmp_path / "d.csv")
    rc, _, err = _cli(["--runs-dir", str(tmp_path / "runs"), "search", "--quiet", "--data", str(csv), "--target",
                       "label", "--noise", "symmetric:0.3", "--model", model], capsys)
    assert rc == 2 and message in err and err.count("\n") == 1, err


@pytest.mark.parametrize("n_classes", [2, 3, 20])
def test_rejection_and_diagnostics_take_the_class_count(n_classes: int) -> None:
    from lossforge.diagnostics import diagnose
    from lossforge.expression import LossExpression
    from lossforge.rejection import probe, rejection_reason

    mae = LossExpression.parse("sqrt((y_pred - y_real)**2)")
    assert rejection_reason(mae, {"classification"}, n_classes=n_classes) is None
    assert probe(mae, {"classification"}, n_classes).fingerprint != probe(mae, {"classification"}).fingerprint or \
        n_classes == 10
    verdict = diagnose(mae, "classification", n_classes=n_classes)
    assert verdict.bounded and verdict.symmetric  # MAE is symmetric for any class count
    ce = diagnose(LossExpression.parse("-y_real*log(y_pred)"), "classification", n_classes=n_classes)
    assert not ce.bounded and not ce.symmetric


def test_the_search_probes_a_loss_at_the_class_counts_of_its_suite(tmp_path: Path) -> None:
    from lossforge.evaluator import Evaluator
    from lossforge.expression import LossExpression
    from lossforge.rejection import probe

    # pulls the true-class probability to 0.3: progress from 1/10, a step back from 1/2
    toward = LossExpression.parse("y_real*(y_pred - 0.3)**2")
    assert probe(toward, {"classification"}, 10).reason is None
    assert "at 2 classes" in probe(toward, {"classification"}, (2, 10)).reason
    csv = write_csv(table(n=40, n_classes=2), tmp_path / "two.csv")
    two = suite_from_spec({"name": "two", "tasks": [{"name": "plain", "type": "user", "settings": {
        "dataset": str(csv), "target": "label", "noise": "symmetric", "noise_rate": 0.2, **FAST}}]})
    assert two.probe_classes == (2,) and load_suite("robust").probe_classes == (10,)
    reason, fingerprint = Evaluator(two).rejection(toward)
    assert reason is not None and fingerprint is None  # rejected before any training on the 2-class data
    mae = LossExpression.parse("sqrt((y_pred - y_real)**2)")
    assert Evaluator(two).rejection(mae) == (None, probe(mae, {"classification"}, 2).fingerprint)


# --- regression on your data ---------------------------------------------------------------------------------


def _regression_csv(tmp_path: Path, trusted_share: float = 0.25) -> Path:
    rng = np.random.default_rng(1)
    n = 400
    x = rng.uniform(-2, 2, (n, 3))
    y = x[:, 0] + 0.5 * x[:, 1] + 0.05 * rng.normal(size=n)
    trusted = rng.random(n) < trusted_share
    noisy = y.copy()
    outliers = (~trusted) & (rng.random(n) < 0.2)
    noisy[outliers] += 8.0
    frame = pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "y": noisy, "ok": trusted.astype(int),
                          "clean": y, "is_outlier": outliers.astype(int)})
    return write_csv(frame, tmp_path / "reg.csv")


def test_regression_on_your_data_with_injected_or_given_noise(tmp_path: Path) -> None:
    from lossforge.tasks.user import UserRegressionTask

    csv = _regression_csv(tmp_path)
    frame = pd.read_csv(csv)
    injected = UserRegressionTask(dataset=str(csv), target="clean", features=["a", "b", "c"], noise="outliers",
                                  noise_std=0.0, outlier_fraction=0.15, steps=50)
    x_train, y_train, x_test, y_test = injected.data(0)
    train, test = injected.split_rows(0)
    given_clean = frame["clean"].to_numpy()
    # standardised with the training rows' targets only: the test rows never shape the training data
    clean = torch.tensor((given_clean - given_clean[train].mean()) / given_clean[train].std(), dtype=torch.float32)
    moved = ~torch.isclose(y_train, clean[train], atol=1e-5)
    assert moved.float().mean().item() == pytest.approx(0.15, abs=1 / len(y_train))
    assert torch.allclose(y_test, clean[test], atol=1e-5)  # scored on clean targets
    a = frame["a"].to_numpy()
    assert x_train[:, 0].min() == 0.0 and x_train[:, 0].max() == 1.0  # the training rows' own range
    assert torch.allclose(x_train[:, 0].double(),
                          torch.tensor((a[train] - a[train].min()) / np.ptp(a[train])), atol=1e-6)
    given = UserRegressionTask(dataset=str(csv), features=["a", "b", "c"], trusted="ok", steps=50)
    estimate = given.noise_estimate()
    share = frame.loc[frame.ok == 0, "is_outlier"].mean()
    assert estimate["outlier_fraction"] == pytest.approx(share, abs=0.03)
    assert abs(estimate["bias"]) < 0.1
    assert check_task(given).passed
    scores = {s: r.score for s, r in zip(("mse", "mae"), given.evaluate([make_loss(s, "regression")
                                                                        for s in ("mse", "mae")], seed=0))}
    assert scores["mae"] > scores["mse"]  # the robust loss wins under one-sided outliers


def test_regression_refuses_labels_as_targets(tmp_path: Path, capsys) -> None:
    csv = write_csv(table(labels=["p", "q", "r"]), tmp_path / "d.csv")
    rc, _, err = _cli(["--runs-dir", str(tmp_path / "runs"), "search", "--quiet", "--data", str(csv), "--target",
                       "label", "--problem", "regression", "--noise", "gaussian:0.5"], capsys)
    assert rc == 2 and "is not numeric" in err and err.count("\n") == 1


def test_entry_point_task_types_resolve_by_name(monkeypatch) -> None:
    from importlib import metadata

    import lossforge
    from lossforge.tasks import registry

    point = metadata.EntryPoint(name="toy_from_a_package", value=f"{__name__}:Toy", group=registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry, "_entry_points", lambda: {point.name: point})
    assert resolve("toy_from_a_package") is Toy
    assert "toy_from_a_package" in registry.task_types()
    suite = suite_from_spec({"name": "s", "tasks": [{"name": "t", "type": "toy_from_a_package"}]})
    assert suite.spec()["tasks"][0]["type"] == f"{__name__}:Toy"  # stored by path: no package lookup needed later
    assert lossforge.register_task is register_task


def test_api_search_takes_a_suite_object(tmp_path: Path, monkeypatch) -> None:
    import lossforge

    monkeypatch.chdir(tmp_path)
    suite = suite_from_spec({"name": "tiny", "seeds": [0], "tasks": [
        {"name": "r", "type": "regression", "settings": {"steps": 30, "n_train": 32, "n_test": 32}}]})
    hof = lossforge.search(run="obj", quiet=True, suite=suite, population=4, generations=1, jobs=1, validate_top=0)
    assert hof
    stored = list((tmp_path / "runs" / "suites").glob("tiny-*.toml"))
    assert len(stored) == 1 and load_suite(stored[0]).hash == suite.hash
