"""Run reports (lossforge.report) and search progress reporters (lossforge.progress)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import math
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import lossforge
from lossforge.baselines import get_baseline
from lossforge.engine import GenerationStats
from lossforge.errors import ExportError, RunError
from lossforge.expression import LossExpression
from lossforge.progress import format_duration, make_progress
from lossforge.report import _classification_curve, _regression_curve, pareto_front, write_report
from lossforge.scoring import suite_from_spec
from lossforge.runfile import RunStore

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REGRESSION_SPEC = {"name": "synthetic", "seeds": [0], "tasks": [
    {"name": "gaussian", "type": "regression", "preset": "gaussian"},
    {"name": "outliers", "type": "regression", "preset": "outliers"},
]}
CLASSIFICATION_SPEC = {"name": "synthetic_cls", "seeds": [0], "tasks": [
    {"name": "noisy_digits", "type": "label_noise", "settings": {"epochs": 1}},
]}


# ------------------------------------------------------------------------------------------ pareto
def test_pareto_front_keeps_only_non_dominated_points_by_complexity() -> None:
    points = [(5, 0.9), (3, 0.5), (8, 0.95), (4, 0.4), (6, 0.9), (2, 0.1), (9, 0.95), (3, 0.3)]
    front = pareto_front(points)
    assert [points[i] for i in front] == [(2, 0.1), (3, 0.5), (5, 0.9), (8, 0.95)]
    assert front == [5, 1, 0, 2]


def test_pareto_front_edge_cases() -> None:
    assert pareto_front([]) == []
    assert pareto_front([(4, 0.2)]) == [0]
    # an identical point is not better on either axis: one representative is kept
    assert len(pareto_front([(3, 0.5), (3, 0.5)])) == 1
    # simpler and fitter dominates everything
    assert pareto_front([(5, 0.1), (1, 2.0), (3, 1.0)]) == [1]


# ---------------------------------------------------------------------------------- synthetic runs
def _raw(scores: list[float]) -> dict[str, Any]:
    return {"seeds": [0] * len(scores), "scores": scores, "statuses": ["complete"] * len(scores),
            "reasons": [None] * len(scores), "metrics": [{}] * len(scores)}


def _make_run(path: Path, spec: dict[str, Any], losses: dict[str, float], baselines: dict[str, float],
              generations: int = 3) -> Path:
    """A run file as a search leaves it: each loss scored ``score`` on every task, baselines likewise."""
    suite = suite_from_spec(spec)
    reference_name = suite.tasks[0].task.reference
    with RunStore.create(path, {"suite": suite.spec()}, suite_hash=suite.hash) as store:
        for name, score in baselines.items():
            store.set_result("baseline", name, {t.name: _raw([score]) for t in suite.tasks})
        reference = {t.name: _raw([baselines[reference_name]]) for t in suite.tasks}
        for gen, (text, score) in enumerate(losses.items()):
            expr = LossExpression.parse(text)
            fitness, summary = suite.fitness({t.name: _raw([score]) for t in suite.tasks}, reference)
            store.record_candidate(gen % generations, list(expr.tokens), status="complete", key=expr.key,
                                   formula=expr.formula(), complexity=expr.complexity, fitness=fitness,
                                   task_scores=summary)
        store.record_candidate(0, ["y_pred"], status="rejected", reason="ignores y_real")
        for gen in range(generations):
            stats = GenerationStats(gen, 4, 0, 1, 0, 1.0 + gen / 10, 0.5 + gen / 10, "x", 1.0)
            store.record_generation(gen, [], dataclasses.asdict(stats))
        store.set_status("finished")
    return path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


REGRESSION_LOSSES = {"sqrt((y_pred - y_real)**2)": -0.5, "(y_pred - y_real)**2": -1.0,
                     "log(1 + (y_pred - y_real)**2)": -0.4, "exp(y_pred - y_real) - (y_pred - y_real)": -2.0}
REGRESSION_BASELINES = {"mse": -1.0, "huber": -0.6, "mae": -0.5}


@pytest.fixture
def regression_run(tmp_path: Path) -> Path:
    return _make_run(tmp_path / "reg.db", REGRESSION_SPEC, REGRESSION_LOSSES, REGRESSION_BASELINES)


def test_report_of_a_regression_run(regression_run: Path, tmp_path: Path) -> None:
    before = _digest(regression_run)
    report = write_report(regression_run, tmp_path / "out" / "nested", top=3)
    assert report == tmp_path / "out" / "nested" / "report.md"
    assert _digest(regression_run) == before  # read-only
    text = report.read_text()
    for name in ("fitness", "pareto", "shapes", "tasks"):
        image = report.parent / f"report_{name}.png"
        assert image.read_bytes().startswith(PNG_MAGIC)
        assert f"](report_{name}.png)" in text
    hall = text.split("## Hall of fame")[1].split("## Baselines")[0]
    assert "| rank | formula | complexity | fitness | validation | gaussian | outliers |" in hall
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in hall.splitlines()
            if line[:3] in ("| 1", "| 2", "| 3", "| 4")]
    # ranked by fitness: the reference (mse) scores -1.0 on each task, so a loss scoring -0.4 has 2.5;
    # top=3 leaves the worst loss out
    assert [(row[0], row[3], row[5]) for row in rows] == [("1", "2.5000", "2.5000"), ("2", "2.0000", "2.0000"),
                                                          ("3", "1.0000", "1.0000")]
    assert rows[0][1].startswith("`log(") and rows[1][1].startswith("`sqrt(") and "exp(" not in hall
    baselines = text.split("## Baselines")[1]
    assert "| mae | 2.0000 |" in baselines and "| mse | 1.0000 |" in baselines
    assert "4 complete, 1 rejected" in text
    assert "min-max scaled" in text  # the shapes caption says the curves are normalised


def test_report_of_a_classification_run(tmp_path: Path) -> None:
    losses = {"-y_real*log(y_pred) + y_real*(1 - y_pred)": 0.8, "y_real*(1 - y_pred)": 0.7}
    run = _make_run(tmp_path / "cls.db", CLASSIFICATION_SPEC, losses, {"cross_entropy": 0.75, "gce": 0.78, "mae": 0.6})
    report = write_report(run, tmp_path / "out")
    text = report.read_text()
    assert "noisy_digits" in text and "| cross_entropy | 1.0000 |" in text
    assert (report.parent / "report_shapes.png").stat().st_size > 10_000


def test_report_of_a_run_without_results_yet(tmp_path: Path) -> None:
    suite = suite_from_spec(REGRESSION_SPEC)
    with RunStore.create(tmp_path / "new.db", {"suite": suite.spec()}, suite_hash=suite.hash):
        pass
    report = write_report(tmp_path / "new.db", tmp_path / "out")
    text = report.read_text()
    assert "_No complete candidate yet._" in text and "_No baselines stored._" in text
    assert not (tmp_path / "out" / "report_fitness.png").exists()
    assert (tmp_path / "out" / "report_shapes.png").exists()  # the reference shapes alone


def test_a_forced_report_leaves_no_figure_of_the_report_it_replaced(regression_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_report(regression_run, out)
    assert (out / "report_fitness.png").exists() and (out / "report_pareto.png").exists()
    suite = suite_from_spec(REGRESSION_SPEC)
    with RunStore.create(tmp_path / "new.db", {"suite": suite.spec()}, suite_hash=suite.hash):
        pass
    with pytest.raises(ExportError, match="--force"):
        write_report(tmp_path / "new.db", out)
    assert (out / "report_fitness.png").exists()  # refused: nothing touched
    write_report(tmp_path / "new.db", out, force=True)
    # the new run has no generation and no candidate: the old run's curves must not sit beside its report
    assert not (out / "report_fitness.png").exists() and not (out / "report_pareto.png").exists()
    assert (out / "report_shapes.png").exists() and "report_fitness.png" not in (out / "report.md").read_text()


def test_report_of_a_real_search(tmp_path: Path, tiny_suite: str) -> None:
    run = tmp_path / "real.db"
    lossforge.search(run=run, suite=tiny_suite, population=4, generations=1, chunk_size=4, jobs=1,
                     executor="serial")
    text = write_report(run, tmp_path / "out").read_text()
    assert "Generations finished: 2" in text and "| mse | 1.0000 |" in text


def test_report_errors_are_one_line(regression_run: Path, tmp_path: Path) -> None:
    with pytest.raises(RunError, match="no run at"):
        write_report(tmp_path / "missing.db", tmp_path / "out")
    not_a_run = tmp_path / "notes.db"
    not_a_run.write_text("hello")
    with pytest.raises(RunError):
        write_report(not_a_run, tmp_path / "out")
    blocker = tmp_path / "file"
    blocker.write_text("")
    for out in (blocker, blocker / "sub"):  # a file where the directory should be (unwritable even as root)
        with pytest.raises(ExportError, match="cannot create report directory") as info:
            write_report(regression_run, out)
        assert "\n" not in str(info.value)
    with pytest.raises(ExportError, match="top"):
        write_report(regression_run, tmp_path / "out", top=0)


def test_shape_curves_match_the_formulas() -> None:
    mse = _regression_curve(get_baseline("mse").make("regression"))
    x = torch.linspace(-3, 3, len(mse), dtype=torch.float64)
    assert torch.allclose(mse, x**2)
    for n_classes in (2, 10):
        ce = _classification_curve(get_baseline("cross_entropy").make("classification"), n_classes)
        p = torch.linspace(0.01, 0.99, len(ce), dtype=torch.float64)
        assert torch.allclose(ce, -torch.log(p), atol=1e-6)


# ---------------------------------------------------------------------------------------- progress
class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _stats(gen: int, best: float = 1.25) -> GenerationStats:
    return GenerationStats(gen=gen, evaluated=4, cache_hits=1, rejected=2, failed=0, best=best, median=0.5,
                           best_formula="sqrt((y_pred - y_real)**2)", seconds=10.0)


def _drive(progress: Any, clock: _Clock, generations: int = 2) -> None:
    for gen in range(generations):
        progress.generation_started(gen)
        for _ in range(4):
            clock.now += 2.5
            progress.candidate_scored()
        progress.generation_finished(_stats(gen))
    progress.close()


def test_quiet_progress_prints_nothing() -> None:
    stream = _Terminal()
    _drive(make_progress(3, 4, quiet=True, stream=stream), _Clock())
    assert stream.getvalue() == ""


def test_progress_off_a_terminal_prints_one_line_per_generation() -> None:
    stream, clock = io.StringIO(), _Clock()
    _drive(make_progress(3, 4, stream=stream, clock=clock), clock)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in stream.getvalue()
    assert lines[0].startswith(_stats(0).line())
    # 4 losses in 10 s; each generation took 10 s, so after the first one two remain (20 s), then one
    assert lines[0].endswith("| 0.40 losses/s  ETA 20s")
    assert lines[1].endswith("| 0.40 losses/s  ETA 10s")


def test_progress_on_a_terminal_without_rich_redraws_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rich", None)  # import rich -> ImportError
    stream, clock = _Terminal(), _Clock()
    _drive(make_progress(2, 4, stream=stream, clock=clock), clock)
    out = stream.getvalue()
    assert "\rgen 0 (0/2 done)  trained 3/4  best -  rejected 0" in out
    assert "gen 1 (1/2 done)  trained 4/4  best 1.2500  rejected 2" in out
    finished = [line.split("\r")[-1] for line in out.split("\n")[:-1]]
    assert [line[:7] for line in finished] == ["gen   0", "gen   1"] and out.endswith("\n")


def test_progress_on_a_terminal_with_rich() -> None:
    pytest.importorskip("rich")
    stream, clock = _Terminal(), _Clock()
    _drive(make_progress(2, 4, stream=stream, clock=clock), clock)
    out = stream.getvalue()
    assert "gen   0  trained   4" in out and "gen   1  trained   4" in out and "ETA" in out


def test_format_duration() -> None:
    assert [format_duration(s) for s in (None, math.inf, 0.4, 42, 185, 3725)] == ["?", "?", "0s", "42s",
                                                                                   "3m05s", "1h02m"]


def test_report_markdown_escapes_hostile_names_and_formulas(tmp_path: Path) -> None:
    import sqlite3

    run = _make_run(tmp_path / "hostile.db", REGRESSION_SPEC, REGRESSION_LOSSES, REGRESSION_BASELINES)
    evil = "<img src=x onerror=alert(1)>|[link](http://x)"
    with sqlite3.connect(run) as db:  # a run file can say anything: names and formulas are text in it
        db.execute("UPDATE config SET document = replace(document, '\"synthetic\"', ?)", (json_str(evil),))
        db.execute("UPDATE results SET name = ? WHERE kind = 'baseline' AND name = 'huber'", ("huber" + evil,))
        db.execute("UPDATE candidates SET formula = ? WHERE formula LIKE 'log(%'",
                   ("log(`<script>alert(1)</script>` | 1)\n# heading",))
    db.close()
    text = write_report(run, tmp_path / "out").read_text()
    assert "<img" not in text and "onerror=alert(1)>" not in text and "[link](" not in text
    assert "Suite: &lt;img src=x onerror=alert(1)&gt;\\|\\[link\\](http://x), tasks" in text
    hall = text.split("## Hall of fame")[1].split("## Baselines")[0]
    row = next(line for line in hall.splitlines() if line.startswith("| 1 |"))
    # the formula stays one code span (a fence longer than its backticks), in one cell, on one line
    assert "``log(`<script>alert(1)</script>` \\| 1) # heading``" in row
    assert len(row.replace("\\|", "").split("|")) == 2 + 7  # rank, formula, complexity, fitness, validation, 2 tasks
    assert "\n# heading" not in text
    baselines = text.split("## Baselines")[1]
    assert "| huber&lt;img" in baselines and "\\|\\[link\\]" in baselines


def json_str(text: str) -> str:
    import json

    return json.dumps(text)


def test_show_markdown_escapes_hostile_names_and_formulas(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import sqlite3

    from lossforge.cli import main

    run = _make_run(tmp_path / "hostile.db", REGRESSION_SPEC, REGRESSION_LOSSES, REGRESSION_BASELINES)
    with sqlite3.connect(run) as db:
        for sep in (":", ": "):  # the task's name, not its noise kind (also "gaussian")
            db.execute("UPDATE config SET document = replace(document, ?, ?)",
                       (f'"name"{sep}"gaussian"', f'"name"{sep}"gauss<b>|x"'))
        db.execute("UPDATE results SET task_scores = replace(task_scores, ?, ?)", ('"gaussian":', '"gauss<b>|x":'))
        db.execute("UPDATE candidates SET formula = ? WHERE formula LIKE 'log(%'", ("<script>x</script>\n| 1",))
    db.close()
    assert main(["show", str(run), "--format", "markdown"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "<b>" not in lines[0] and "gauss&lt;b&gt;\\|x" in lines[0]
    assert lines[0].replace("\\|", "").count("|") == lines[1].count("|")  # one header cell per column
    # the formula as a code span, as report.md writes it: shown literally, HTML included
    assert any(" | `<script>x</script> \\| 1` |" in line for line in lines[2:])
    assert not any("<script>" in line.replace("`<script>x</script> \\| 1`", "") for line in lines)
    assert len(lines) == 2 + len(REGRESSION_LOSSES)
