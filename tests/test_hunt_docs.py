"""What the README and docs/*.md promise, checked as a new user would run it: each test is a documented
command or snippet that did not work as written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lossforge.cli import main

TINY_CLASSIFICATION = str(Path(__file__).parent / "data" / "tiny_classification.toml")


def test_a_baseline_spec_with_several_settings_is_one_baseline_of_baselines_option(
        capsys: pytest.CaptureFixture[str]) -> None:
    # README/docs/baselines.md: a torch baseline at other settings is the spec "anl_ce(alpha=1.2, beta=0.9)".
    # Before: --baselines split it at its comma into 'anl_ce(alpha=1.2' and 'beta=0.9)' and refused both
    rc = main(["baselines", "--suite", TINY_CLASSIFICATION, "--baselines",
               "anl_ce(alpha=1.2, beta=0.9), cross_entropy,", "--json"])
    assert rc == 0
    names = [row["name"] for row in json.loads(capsys.readouterr().out)["rows"]]
    assert names == ["anl_ce(alpha=1.2, beta=0.9)", "cross_entropy"]


def test_an_unclosed_baseline_spec_is_refused_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["baselines", "--suite", TINY_CLASSIFICATION, "--baselines", "cross_entropy,anl_ce(alpha=1.2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "anl_ce(alpha=1.2" in err


@pytest.mark.parametrize("problem", ["regression", "classification"])
def test_diagnose_of_a_loss_free_of_y_pred_reports_instead_of_a_traceback(
        tmp_path: Path, problem: str, capsys: pytest.CaptureFixture[str]) -> None:
    # docs/safety.md: `lossforge diagnose "-y_real"` needs no `--`. Before: a RuntimeError traceback from
    # autograd (the loss has no graph to y_pred), in the table and in --plot
    plot = tmp_path / "curves.png"
    assert main(["diagnose", "-y_real", "--problem", problem, "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("loss ") and "problem" not in line)
    assert problem in row and row.split()[-1] == "-y_real"
    assert plot.read_bytes().startswith(b"\x89PNG")



def test_tuning_a_baseline_spec_that_does_not_improve_says_it_kept_the_given_setting(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # Before: "tuned anl_ce(alpha=1.2, beta=0.9): kept the authors' setting", though the tuning starts from
    # (and kept) the user's alpha and beta, not the authors' 1 and 1
    import lossforge.tuning
    from lossforge.tuning import TunedBaseline

    spec = "anl_ce(alpha=1.2, beta=0.9)"
    monkeypatch.setattr(lossforge.tuning, "tune_baselines", lambda names, *a, **k: [
        TunedBaseline(name=n, spec=n, formula=n, fitness_before=0.7, fitness_after=0.7) for n in names])
    assert main(["baselines", "--suite", TINY_CLASSIFICATION, "--baselines", f"{spec},cross_entropy", "--tune"]) == 0
    out = capsys.readouterr().out
    assert f"tuned {spec}: kept the given setting  (tuning seeds" in out
    assert "tuned cross_entropy: kept the authors' setting" in out


def test_an_npy_file_with_a_trusted_column_is_refused_with_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # docs/own-data.md: an .npy file is features and a last label column. Before: `--trusted 4` on one got a
    # TypeError traceback (the task split rows on trusted flags the reader never gave it)
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.random((60, 4))
    data = tmp_path / "d.npy"
    np.save(data, np.column_stack([x, rng.random(60) < 0.3, x[:, 0] > 0.5]).astype(float))
    out = tmp_path / "s.toml"
    assert main(["suite", "init", "--data", str(data), "--trusted", "4", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no trusted flags" in err and "--trusted FILE" in err
    assert not out.exists()


@pytest.mark.parametrize("kind", ["data file", "directory"])
def test_a_new_run_at_a_path_that_holds_no_run_says_so_instead_of_offering_resume(
        tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str]) -> None:
    # README: an existing run name is one line, exit 2. Before: `--run data.csv` (or a folder) said "a run
    # already exists at data.csv; continue it with `lossforge resume data.csv`", which then fails: no run there
    from tests.conftest import TINY_SUITE

    target = tmp_path / "data.csv"
    if kind == "directory":
        target.mkdir()
    else:
        target.write_text("a,b\n1,2\n")
    before = target.read_text() if kind == "data file" else None
    assert main(["search", "--suite", TINY_SUITE, "--population", "6", "--generations", "1", "--quiet",
                 "--run", str(target)]) == 2
    err = capsys.readouterr().err
    expected = "a directory" if kind == "directory" else "no run file"
    assert err.count("\n") == 1 and f"already exists and is {expected}" in err and "choose another" in err
    assert "resume" not in err
    if before is not None:
        assert target.read_text() == before
