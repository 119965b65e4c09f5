"""CLI views: runs agrees with show, diagnose defaults as search/score, help names the bundled suites and
spaces, dashboard refuses bad input with one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import lossforge
from lossforge.cli import main
from lossforge.scoring import SUITES_DIR

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("views")
    lossforge.search(run=out / "a.db", suite=str(REPO / "tests/data/tiny_suite.toml"), population=6,
                     generations=2, chunk_size=4, jobs=1, executor="serial", quiet=True)
    return out


def test_runs_shows_rank_one_as_show_ranks_it(runs_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["show", str(runs_dir / "a.db"), "--json", "--top", "1"]) == 0
    top = json.loads(capsys.readouterr().out)["hall_of_fame"][0]
    assert main(["--runs-dir", str(runs_dir), "runs"]) == 0
    out = capsys.readouterr().out
    header, _, row = out.splitlines()[:3]
    cells = dict(zip(header.split(), row.split()))
    assert cells["fitness"] == f"{top['fitness']:.4f}" and cells["validation"] == f"{top['validation_fitness']:.4f}"


def test_diagnose_defaults_to_the_default_suites_problem(capsys: pytest.CaptureFixture) -> None:
    assert main(["diagnose", "(y_pred - y_real)**2"]) == 0
    rows = capsys.readouterr().out.splitlines()[2:]
    assert rows and all(" regression " in r for r in rows) and any(r.startswith("mse") for r in rows)
    assert main(["diagnose", "(y_pred - y_real)**2", "--problem", "classification"]) == 0
    assert "cross_entropy" in capsys.readouterr().out


@pytest.mark.parametrize("command", [[], ["search"], ["score"], ["baselines"], ["space"]])
def test_help_lists_the_bundled_suites_and_spaces(command: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for suite in sorted(p.stem for p in SUITES_DIR.glob("*.toml")):
        assert suite in text
    assert "bundled search spaces: survey" in text


def test_dashboard_bad_target_and_port_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["dashboard", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lossforge: error: ") and err.count("\n") == 1
    assert main(["dashboard", str(tmp_path), "--port", "99999"]) == 2
    assert "port" in capsys.readouterr().err


def test_names_with_control_characters_are_shown_escaped_never_obeyed(runs_dir: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    hostile = tmp_path / "runs"
    hostile.mkdir()
    (hostile / "ok\x1b[2Jname\nrow.db").write_bytes((runs_dir / "a.db").read_bytes())  # a good run, odd name
    (hostile / "bad\x1b]0;title\x07.db").write_bytes(b"not a run file")
    assert main(["--runs-dir", str(hostile), "runs"]) == 0
    captured = capsys.readouterr()
    assert "\x1b" not in captured.out + captured.err and "\x07" not in captured.err
    assert "ok\\x1b[2Jname\\nrow" in captured.out  # the row is there, its name escaped on one line
    assert len(captured.err.strip().splitlines()) == 1 and "bad\\x1b]0;title\\x07.db" in captured.err
    assert main(["show", str(hostile / "missing\x1b[31m.db")]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and "missing\\x1b[31m" in err and len(err.strip().splitlines()) == 1


def test_search_progress_shows_a_hostile_run_name_escaped(tmp_path: Path, tiny_suite: str,
                                                          capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "e\x1b[31mred\nx.db"
    assert main(["search", "--suite", tiny_suite, "--population", "4", "--generations", "1", "--jobs", "1",
                 "--executor", "serial", "--run", str(run)]) == 0
    captured = capsys.readouterr()
    assert "\x1b[31m" not in captured.out + captured.err and run.exists()
    header = next(line for line in captured.out.splitlines() if line.startswith("run "))
    assert "e\\x1b[31mred\\nx.db: population 4" in header
    saved = next(line for line in captured.out.splitlines() if line.startswith("run saved to"))
    assert "e\\x1b[31mred\\nx.db" in saved
