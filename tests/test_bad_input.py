"""Bad input across the CLI and the API: one clear error each, exit code 2 (CLI) or a typed exception
(API), no traceback, and saved data left intact."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import lossforge
from lossforge.cli import main
from lossforge.engine import Search, SearchConfig
from lossforge.errors import ConfigError, ExportError, ExpressionError, LossforgeError, RunError, SpaceError
from lossforge.export import load
from lossforge.scoring import load_suite
from lossforge.space import load_space
from lossforge.runfile import RunStore
from tests.conftest import wait_for_generation


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.conftest import TINY_SUITE

    runs = tmp_path_factory.mktemp("runs")
    lossforge.search(run=runs / "saved.db", suite=TINY_SUITE, population=4, generations=1, jobs=1,
                     quiet=True, validate_top=0)
    return runs / "saved.db"


def _fingerprint(folder: Path) -> dict[str, bytes]:
    # Run files and exports; SQLite's -wal/-shm side files come and go with any reader and are not data.
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and not p.name.endswith(("-wal", "-shm"))}


def _cli(capsys: pytest.CaptureFixture, runs_dir: Path, *args: str) -> tuple[int, str]:
    try:
        code = main(["--runs-dir", str(runs_dir), *args])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    err = capsys.readouterr().err
    return code, err


CLI_CASES = [
    (["search", "--population", "0"], "population must be at least 2"),
    (["search", "--population", "1"], "population must be at least 2"),  # the argument check said "at least 1"
    (["search", "--generations", "-2"], "at least 1"),
    (["search", "--population", "many"], "not an integer"),
    (["search", "--population", "4000000000"], "population must be at most 1000000"),
    (["baselines", "--baselines", ",,"], "names no baseline"),
    (["search", "--jobs", "0"], "-1 (all cores)"),
    (["search", "--seed", "1.5"], "not an integer"),
    (["search", "--space", "no_such_space"], "unknown search space"),
    (["search", "--suite", "no_such_suite"], "unknown suite"),
    (["search", "--run", "bad name!"], "run name"),
    (["search", "--selection", "random"], "invalid choice"),
    (["search", "--hall-of-fame", "99999999999999999999"], "hall_of_fame must be at most"),  # was OverflowError
    (["search", "--tune-top", "99999999999999999999"], "tune_top must be at most"),
    (["search", "--chunk-timeout", "inf"], "chunk_timeout_s"),  # was accepted, then every chunk failed
    (["search", "--chunk-timeout", "1e10"], "chunk_timeout_s"),
    (["search", "--device", "gpu"], "'gpu' is not a torch device"),  # was "reference loss mse failed ..."
    (["search", "--device", ""], "'' is not a torch device"),
    (["show", "no_such_run"], "no run"),
    (["show", "saved", "--top", "0"], "at least 1"),
    (["export", "no_such_run", "--format", "py"], "no run"),
    (["export", "saved", "--format", "exe"], "invalid choice"),
    (["export", "saved", "--format", "json", "--rank", "999"], "rank 999"),
    (["export", "saved", "--format", "json", "--rank", "first"], "not an integer"),
    (["export", "saved", "--format", "py", "-o", "/proc/forbidden/loss.py"], "cannot write"),
    (["resume", "no_such_run"], "no run"),
    (["report", "no_such_run"], "no run"),
    (["score", "__import__('os').system('echo hacked')"], "unknown function"),
    (["score", "y_pred +"], "cannot parse"),
    (["score", "y_pred ** y_real"], "integer powers"),
    (["score", "(y_pred - y_real)**2", "--against", "no_such_loss"], "unknown baseline"),
    (["baselines", "--suite", "no_such_suite"], "unknown suite"),
    (["space", "no_such_space"], "unknown search space"),
]


@pytest.mark.parametrize("args, fragment", CLI_CASES, ids=[" ".join(a) for a, _ in CLI_CASES])
def test_cli_bad_input_one_line_exit_2(saved_run: Path, capsys: pytest.CaptureFixture, args: list[str],
                                      fragment: str) -> None:
    before = _fingerprint(saved_run.parent)
    code, err = _cli(capsys, saved_run.parent, *args)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0], err
    assert "Traceback" not in err and "hacked" not in err
    assert _fingerprint(saved_run.parent) == before  # nothing saved was touched


def test_existing_run_is_refused_and_kept(saved_run: Path, capsys: pytest.CaptureFixture) -> None:
    before = saved_run.read_bytes()
    code, err = _cli(capsys, saved_run.parent, "search", "--run", "saved")
    assert code == 2 and "resume" in err
    assert saved_run.read_bytes() == before
    with pytest.raises(RunError, match="resume"):
        Search.create(saved_run, SearchConfig(population=4, generations=1))


@pytest.mark.parametrize("corruption", ["truncated", "garbage", "foreign", "newer_schema", "empty"])
def test_damaged_run_files_get_one_clear_error_and_stay_unchanged(
    saved_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture, corruption: str
) -> None:
    path = tmp_path / "damaged.db"
    if corruption == "truncated":
        data = saved_run.read_bytes()
        path.write_bytes(data[: len(data) // 3])
    elif corruption == "garbage":
        path.write_bytes(os.urandom(8192))
    elif corruption == "empty":
        path.write_bytes(b"")
    elif corruption == "foreign":
        con = sqlite3.connect(path)
        con.execute("CREATE TABLE t (x)")
        con.commit()
        con.close()
    else:
        shutil.copy(saved_run, path)
        con = sqlite3.connect(path)
        con.execute("PRAGMA user_version = 99")
        con.commit()
        con.close()
    before = path.read_bytes()
    for command in (["show", str(path)], ["resume", str(path)], ["export", str(path), "--format", "json"],
                    ["report", str(path)]):
        code, err = _cli(capsys, tmp_path, *command)
        assert code == 2 and len(err.strip().splitlines()) == 1 and str(path) in err, (command, err)
    with pytest.raises(RunError):
        load(path)
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    "content, fragment",
    [
        ('{"format": "lossforge-loss", "version": 1, "tokens": ["system", "y_pred"]}', "unknown token"),
        ('{"format": "lossforge-loss", "version": 1, "tokens": "__import__(\'os\')"}', "prefix tokens"),
        ('{"format": "lossforge-loss", "version": 1, "tokens": ["multiply", 1e300, "y_pred"]}', "outside"),
        ('{"format": "lossforge-loss", "version": 1, "tokens": ' + json.dumps(["plus"] * 600 + ["y_pred"] * 601)
         + "}", "limit"),
        ('{"format": "lossforge-loss", "version": 99, "tokens": ["y_pred"]}', "version"),
        ('{"format": "something-else"}', "not a lossforge loss export"),
        ("import os\nos.system('true')", "not a JSON loss export"),
        ("[" * 100_000 + "]" * 100_000, "not a JSON loss export"),
    ],
)
def test_hostile_or_malformed_exports_are_refused(tmp_path: Path, content: str, fragment: str) -> None:
    path = tmp_path / "hostile.json"
    path.write_text(content)
    with pytest.raises(ExportError, match=fragment):
        load(path)


def test_oversized_export_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "huge.json"
    path.write_text(" " * 2_000_001 + "{}")
    with pytest.raises(ExportError, match="limit"):
        load(path)


@pytest.mark.parametrize("rank", [0, -1, 10_000, 1.5, True])
def test_bad_rank_through_the_api(saved_run: Path, rank: object) -> None:
    with pytest.raises(ExportError, match="rank"):
        load(saved_run, rank=rank)  # type: ignore[arg-type]


def test_missing_export_file(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="no such file"):
        load(tmp_path / "nothing.json")


@pytest.mark.parametrize("bad", [dict(population=0), dict(generations=0), dict(population=-3), dict(jobs=0),
                                 dict(selection="random"), dict(chunk_size=0), dict(crossover_prob=1.5)])
def test_bad_search_config(bad: dict) -> None:
    with pytest.raises(ConfigError):
        SearchConfig(**bad)


@pytest.mark.parametrize("bad", [dict(population="10"), dict(population=2.5), dict(seed="x"), dict(seed=1.5),
                                 dict(budget="100"), dict(screening="0.5"), dict(niche=None), dict(suite=None),
                                 dict(device=3), dict(chunk_timeout_s="5"), dict(seed_baselines="no"),
                                 dict(chunk_size=2.0), dict(elite=True)])
def test_wrong_types_in_a_search_config_are_config_errors(bad: dict) -> None:
    """A setting of the wrong type names the setting (was a bare TypeError, or accepted: population 2.5)."""
    with pytest.raises(ConfigError, match=next(iter(bad))):
        SearchConfig(**bad)


def test_search_config_takes_paths_and_numpy_numbers(tmp_path: Path) -> None:
    import numpy as np

    config = SearchConfig(suite=tmp_path / "s.toml", space=Path("x.toml"), population=np.int64(8),
                          budget=np.float32(10.0))
    assert config.suite == str(tmp_path / "s.toml") and config.space == "x.toml"
    assert type(config.population) is int and type(config.budget) is float
    json.dumps(config.to_dict())  # what the run file stores


def test_api_search_takes_a_path_as_suite(tmp_path: Path, tiny_suite: str) -> None:
    """The signature says ``suite: str | Path``; a Path failed storing the config (ValueError: not JSON)."""
    hof = lossforge.search(run=tmp_path / "p.db", suite=Path(tiny_suite), population=4, generations=1, jobs=1,
                           quiet=True, validate_top=0, confirm_top=0)
    assert hof and (tmp_path / "p.db").exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a CUDA GPU")
def test_an_absent_gpu_is_named_before_anything_runs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, err = _cli(capsys, tmp_path, "search", "--device", "cuda", "--run", "r")
    assert code == 2 and "sees no CUDA GPU" in err and "--device cpu" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r.db").exists()
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        lossforge.score(["(y_pred - y_real)**2"], device="cuda")
    # a remote cluster's workers hold the GPU: this machine need not have one
    assert SearchConfig(device="cuda", executor="dask", scheduler="tcp://10.0.0.5:8786").device == "cuda"


def test_api_errors_are_typed(tmp_path: Path) -> None:
    with pytest.raises(ExpressionError):
        lossforge.SymbolicLoss("open('x')")
    with pytest.raises(SpaceError):
        load_space(tmp_path / "missing.toml")
    with pytest.raises(ConfigError):
        load_suite("no_such_suite")
    with pytest.raises(ConfigError):
        lossforge.search(run=tmp_path / "x.db", population=0)
    assert not (tmp_path / "x.db").exists()
    for cls in (ExpressionError, SpaceError, ConfigError, RunError, ExportError):
        assert issubclass(cls, LossforgeError)


@pytest.mark.parametrize(
    "body, fragment",
    [
        ('seeds = [0]\n[[tasks]]\nname = "a"\ntype = "no_such_task"\n', "unknown task type"),
        ('seeds = [0]\n[[tasks]]\nname = "a"\ntype = "regression"\npreset = "nope"\n', "unknown preset"),
        ('seeds = [0]\n[[tasks]]\nname = "a"\ntype = "regression"\nsettings = { steps = -5 }\n', "steps"),
        ('seeds = [0]\n[[tasks]]\nname = "a"\ntype = "regression"\nsettings = { bogus = 1 }\n', "bogus"),
        ('seeds = []\n[[tasks]]\nname = "a"\ntype = "regression"\n', "seeds"),
        ('seeds = [0]\n', "at least one"),
        ('seeds = [0]\n[[tasks]]\nname = "a"\ntype = "regression"\nweight = -1\n', "weight"),
        ("seeds = [0\n", "cannot read suite"),
        # accepted before: a repeated seed (CI ± 0 from one training counted twice), validation on a search
        # seed (not held out), an infinite weight (every fitness nan), names that are no names
        ('seeds = [0, 0]\n[[tasks]]\nname = "a"\ntype = "regression"\n', "'seeds' repeats a seed"),
        ('seeds = [0]\nvalidation_seeds = [5, 5]\n[[tasks]]\nname = "a"\ntype = "regression"\n',
         "'validation_seeds' repeats"),
        ('seeds = [0, 1]\nvalidation_seeds = [1, 9]\n[[tasks]]\nname = "a"\ntype = "regression"\n',
         r"seed\(s\) \[1\] are both search and validation seeds"),
        ('seeds = [0]\nvalidation_seeds = [true]\n[[tasks]]\nname = "a"\ntype = "regression"\n', "validation_seeds"),
        ('seeds = [0]\n[[tasks]]\nname = "a"\ntype = "regression"\nweight = inf\n', "finite"),
        ('name = 3\nseeds = [0]\n[[tasks]]\nname = "a"\ntype = "regression"\n', "'name' must be a non-empty string"),
        ('seeds = [0]\n[[tasks]]\nname = ""\ntype = "regression"\n', r"tasks\[0\]: 'name' must be"),
        # a task name heads a column of `show --format csv`, which a spreadsheet would run as a formula
        ('seeds = [0]\n[[tasks]]\nname = "=HYPERLINK(1)"\ntype = "regression"\n', "must not start with = "),
        ('seeds = [0]\n[[tasks]]\nname = "@SUM(1)"\ntype = "regression"\n', "must not start with = "),
        ('seeds = [0]\n[[tasks]]\nname = "a\\u001b[2J"\ntype = "regression"\n', "control characters"),
    ],
)
def test_bad_suite_files(tmp_path: Path, body: str, fragment: str) -> None:
    path = tmp_path / "suite.toml"
    path.write_text(body)
    with pytest.raises(ConfigError, match=fragment) as info:
        load_suite(path)
    assert str(path) in str(info.value)


def test_bad_space_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    base = ('name = "x"\noperators = {ops}\n[terminals]\nvariables = ["y_pred", "y_real"]\n'
            "constants = {{ low = {low}, high = 2.0, digits = 2 }}\n[limits]\ninit_min_depth = 1\n"
            "init_max_depth = 2\nmax_depth = 4\nmax_nodes = 20\n")
    cases = [
        (base.format(ops='["plus", "tan"]', low=1.0), "tan"),
        (base.format(ops='["plus"]', low=3.0), "low"),
        ('name = "x"\noperators = ["plus"]\n', "missing field"),
        (base.format(ops='"plus"', low=1.0), "operators"),
        ("not toml at all = = =", "not valid TOML"),
        # were a TypeError traceback, or accepted (a typo ignored, a repeated operator drawn twice as often)
        (base.format(ops='[["plus"]]', low=1.0), "names (strings), got ['plus']"),
        (base.format(ops='["plus", "plus", "minus"]', low=1.0), "operators lists a name twice"),
        (base.replace('["y_pred", "y_real"]', '["y_pred", "y_pred"]').format(ops='["plus"]', low=1.0),
         "terminals.variables lists a name twice"),
        (base.format(ops='["plus"]', low=1.0) + "max_node = 9\n", "unknown field(s) limits.max_node"),
        ("operatorz = 1\n" + base.format(ops='["plus"]', low=1.0), "unknown field(s) operatorz"),
        (base.replace("digits = 2", "digits = 2, hi = 3").format(ops='["plus"]', low=1.0),
         "terminals.constants.hi"),
    ]
    path = tmp_path / "space.toml"
    for text, fragment in cases:
        path.write_text(text)
        code, err = _cli(capsys, tmp_path, "space", str(path))
        assert code == 2 and fragment in err and str(path) in err, (text, err)


@pytest.mark.parametrize("args, fragment", [(["space", ""], "no search space given"),
                                            (["search", "--space", "", "--run", "r"], "no search space given"),
                                            (["baselines", "--suite", ""], "no suite given"),
                                            (["search", "--suite", " ", "--run", "r"], "no suite given")])
def test_an_empty_space_or_suite_name_says_so(tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str],
                                              fragment: str) -> None:
    """An empty name was read as the current directory: "cannot read: Is a directory: '.'"."""
    code, err = _cli(capsys, tmp_path, *args)
    assert code == 2 and fragment in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "r.db").exists()


def test_ctrl_c_stops_cleanly_keeps_everything_and_says_how_to_resume(tmp_path: Path, tiny_suite: str) -> None:
    # more generations than it can finish before the Ctrl-C (one takes ~0.1 s here)
    args = ["--suite", tiny_suite, "--population", "6", "--generations", "1000", "--jobs", "1", "--chunk-size", "2"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "lossforge.cli", "--runs-dir", str(tmp_path), "search", "--run", "ctrlc", *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    run = tmp_path / "ctrlc.db"
    wait_for_generation(proc, run, 0)  # past start-up, searching
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "Traceback" not in err and "lossforge resume" in err and len(err.strip().splitlines()) == 1
    with RunStore.open(run, readonly=True) as store:
        assert store.summary().status.value == "interrupted"
        assert store.candidates()  # everything scored before Ctrl-C is kept


@pytest.mark.parametrize("tokens", [3, None, 2.5, ["plus", "y_pred", 10**400], ["plus", "y_pred", -10**5000]])
def test_tokens_that_are_no_list_or_hold_a_huge_integer_are_expression_errors(tokens: object) -> None:
    """LossExpression(3) was a TypeError ('int' object is not iterable), a constant 10**400 an OverflowError."""
    for build in (lossforge.LossExpression, lossforge.SymbolicLoss):
        with pytest.raises(ExpressionError):
            build(tokens)  # type: ignore[arg-type]


def test_api_score_refuses_unknown_baselines_and_repeated_seeds_before_training(tiny_suite: str) -> None:
    """An unknown baseline name was scored as a row of fitness 0.0; seeds [0, 0] trained seed 0 twice and
    reported a CI of ± 0."""
    with pytest.raises(ConfigError, match="unknown baseline 'nope'"):
        lossforge.score(["(y_pred - y_real)**2"], suite=tiny_suite, baselines=["mse", "nope"])
    with pytest.raises(ConfigError, match="repeat a seed"):
        lossforge.score(["(y_pred - y_real)**2"], suite=tiny_suite, seeds=[0, 0], baselines=["mse"])
    with pytest.raises(ExpressionError):
        lossforge.score([3], suite=tiny_suite, baselines=[])  # type: ignore[list-item]


def test_api_score_takes_one_expression_and_one_baseline_as_strings(tiny_suite: str) -> None:
    """A string was iterated: "(y_pred..." parsed as "(" alone, baselines="mse" scored 'm', 's' and 'e'."""
    rows = lossforge.score("(y_pred - y_real)**2", suite=tiny_suite, baselines="mse", jobs=1)
    assert [r.name for r in rows] == ["loss 1", "mse"]
    assert rows[0].per_seed == rows[1].per_seed  # the same loss as mse, trained alike


@pytest.mark.parametrize("args, fragment", [
    (["score", "y_pred - y_real", "--seeds", "2", "--validation"], "not allowed with argument --seeds"),
    (["baselines", "--seeds", "2", "--validation"], "not allowed with argument --seeds"),
    (["score", "y_pred - y_real", "--seeds", "99999999999999999999"], "at most 1000"),  # was OverflowError
    (["baselines", "--seeds", "1000000000"], "at most 1000"),
])
def test_score_and_baselines_seed_options(tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str],
                                          fragment: str) -> None:
    """``--seeds N | --validation``: given both, score used the validation seeds and baselines --seeds."""
    code, err = _cli(capsys, tmp_path, *args)
    assert code == 2 and fragment in err and len(err.splitlines()) == 1, err


def test_api_search_keeps_a_named_run_in_runs_dir(tmp_path: Path, tiny_suite: str, monkeypatch) -> None:
    """search("named", runs_dir=DIR) wrote runs/named.db under the working directory, not DIR/named.db."""
    monkeypatch.chdir(tmp_path)
    lossforge.search("named", runs_dir=tmp_path / "elsewhere", suite=tiny_suite, population=4, generations=1,
                     jobs=1, quiet=True, validate_top=0, confirm_top=0)
    assert (tmp_path / "elsewhere" / "named.db").exists() and not (tmp_path / "runs" / "named.db").exists()
