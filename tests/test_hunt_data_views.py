"""A demanding user's look at suites and the result views: hostile suite paths, one seed, hand-edited rows.
Hand-written run contents go in through :mod:`lossforge.runfile`, as a tool or an editor would."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path

import pytest

import lossforge
from lossforge.cli import main
from lossforge.errors import ConfigError
from lossforge.runfile import RunStore
from lossforge.scoring import load_suite
from tests.conftest import TINY_SUITE




def _strict_json(text: str):
    def refuse(constant: str):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


# --- suite files --------------------------------------------------------------------------------------------


def test_a_suite_path_that_is_not_a_small_regular_file_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    # Before: --suite /dev/zero read forever (a FIFO blocked for good) and a huge file was read whole
    with pytest.raises(ConfigError, match="not a regular file"):
        load_suite("/dev/zero")
    fifo = tmp_path / "suite.toml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="not a regular file"):
        load_suite(fifo)
    big = tmp_path / "big.toml"
    big.write_text(Path(TINY_SUITE).read_text() + "#" * (2 * 2**20) + "\n")
    with pytest.raises(ConfigError, match="larger than 1 MiB"):
        load_suite(big)


def test_the_cli_refuses_a_device_as_suite_in_one_line(capsys: pytest.CaptureFixture) -> None:
    assert main(["baselines", "--suite", "/dev/zero"]) == 2
    err = capsys.readouterr().err
    assert "/dev/zero" in err and "not a regular file" in err and len(err.splitlines()) == 1


# --- one seed: no confidence interval -----------------------------------------------------------------------


def test_score_on_one_seed_says_there_is_no_interval_instead_of_inf(capsys: pytest.CaptureFixture) -> None:
    # Before: "1.0000 ± inf" in every cell and "± inf ... p = nan" in the comparison lines
    assert main(["score", "(y_pred - y_real)**2", "--suite", TINY_SUITE, "--baselines", "mae",
                 "--against", "mse"]) == 0
    out = capsys.readouterr().out
    assert "inf" not in out and "nan" not in out
    assert "1.0000 (1 seed)" in out
    assert "no CI" in out
    assert main(["score", "(y_pred - y_real)**2", "--suite", TINY_SUITE, "--baselines", "mae", "--json"]) == 0
    doc = _strict_json(capsys.readouterr().out)
    assert doc["rows"][0]["ci"] is None and doc["rows"][0]["fitness"] == pytest.approx(1.0)


def test_score_on_two_seeds_still_gives_an_interval(capsys: pytest.CaptureFixture) -> None:
    assert main(["score", "(y_pred - y_real)**2", "--suite", TINY_SUITE, "--baselines", "mae", "--seeds", "2",
                 "--against", "mae"]) == 0
    out = capsys.readouterr().out
    assert "1.0000 ± 0.0000" in out and "paired over 2 seeds" in out


def test_rank_one_against_a_baseline_on_one_validation_seed_gives_no_infinite_interval() -> None:
    # a suite validating on one seed (the tiny one does): `show` said "± inf (95% CI, ... p = nan)"
    from lossforge.cli import versus_line
    from lossforge.ranking import Versus
    from lossforge.stats import paired_comparison

    line = versus_line(Versus("mse", paired_comparison([1.25], [1.0])))
    assert "+0.2500 (1 seed: no CI" in line and "inf" not in line and "nan" not in line
    assert "+0.2500 ± 0.6353 (95% CI, paired over 2 seeds" in versus_line(Versus("mse", paired_comparison([1.3, 1.2], [1.0, 1.0])))


# --- a hand-edited invalid row ------------------------------------------------------------------------------


@pytest.fixture()
def edited(tiny_run: Path, tmp_path: Path) -> Path:
    path = tmp_path / "edited.db"
    shutil.copy(tiny_run, path)
    with RunStore.open(path) as store:
        store.record_candidate(1, ["multiply", 1e300, "minus", "y_pred", "y_real"], status="complete",
                               key="big", complexity=3, fitness=5.0)
        store.record_candidate(1, ["frobnicate", "y_pred", "y_real"], status="complete", key="unknown",
                               complexity=3, fitness=4.0)
    return path


def test_show_lists_every_row_and_marks_the_invalid_ones(edited: Path, capsys: pytest.CaptureFixture) -> None:
    # Before: the table stopped at the first invalid row with one error line (exit 2), while
    # open_run(...).hall_of_fame() listed every row
    n = len(lossforge.open_run(edited).hall_of_fame(None, as_frame=False))
    assert main(["show", str(edited), "--top", str(n)]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line[:1].isdigit()]
    assert [int(line.split()[0]) for line in lines[:n]] == list(range(1, n + 1))
    bad = [line for line in lines if "invalid" in line]
    assert len(bad) == 2 and any("1e+300" in line for line in bad) and any("frobnicate" in line for line in bad)
    assert main(["show", str(edited), "--top", str(n), "--format", "markdown"]) == 0
    assert capsys.readouterr().out.count("invalid") == 2
    assert main(["show", str(edited), "--top", str(n), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == n


@pytest.mark.parametrize("key, seeds", [("seeds", "[0, 9223372036854775808]"), ("seeds", "[-1]"),
                                        ("validation_seeds", "[18446744073709551616]"),
                                        ("confirm_seeds", "[-5]")])
def test_a_seed_the_tasks_would_alias_to_another_is_refused(tmp_path: Path, key: str, seeds: str) -> None:
    # Before: seed 2**64 (or 2**63) trained exactly as seed 0, and -1 as 2**63 - 1: one training counted twice
    # under two names, as a repeated seed (which is refused) was
    body = Path(TINY_SUITE).read_text().replace("seeds = [0]\n", "").replace("validation_seeds = [7]\n", "")
    others = {"seeds": "[0]", "validation_seeds": "[7]", "confirm_seeds": "[3]"}
    others[key] = seeds
    path = tmp_path / "s.toml"
    path.write_text("".join(f"{k} = {v}\n" for k, v in others.items()) + body)
    with pytest.raises(ConfigError, match=f"'{key}' must be seeds from 0 to 9223372036854775807"):
        load_suite(path)
    path.write_text("".join(f"{k} = {v}\n" for k, v in {**others, key: "[9223372036854775807]"}.items()) + body)
    assert load_suite(path)


@pytest.mark.parametrize("weight", ["1e308", "1e-320"])
def test_a_weight_that_over_or_underflows_the_fitness_is_refused(tmp_path: Path, weight: str) -> None:
    # Before: two tasks of weight 1e308 (sum inf) or one of 1e-320 (log score underflowing) gave every loss,
    # mae and mse alike, fitness 1.0000
    task = Path(TINY_SUITE).read_text().split("[[tasks]]")[1]
    path = tmp_path / "w.toml"
    path.write_text("seeds = [0]\n" + "".join(f"[[tasks]]{task.replace('outliers', n, 1)}weight = {weight}\n"
                                              for n in ("a", "b")))
    with pytest.raises(ConfigError, match="'weight' must be between 1e-06 and 1e\\+06"):
        load_suite(path)
    path.write_text(path.read_text().replace(f"weight = {weight}", "weight = 1000000.0"))
    assert [t.weight for t in load_suite(path).tasks] == [1e6, 1e6]
