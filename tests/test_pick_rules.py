"""scripts/pick_rules.py: the leave-one-task-out check never lets the held-out task choose the pick, and
measures the pick on it against the right bars."""

from __future__ import annotations

import pytest

from tests.conftest import load_script


@pytest.fixture(scope="module")
def rules():
    return load_script("pick_rules")


def _row(name: str, norm: dict[str, float]) -> dict:
    return {"name": name, "key": name, "norm": norm, "raw": {t: 0.5 * v for t, v in norm.items()}}


TASKS = ["a", "b", "c"]
WEIGHTS = {"a": 1.0, "b": 1.0, "c": 2.0}


def test_the_held_out_task_never_decides_the_pick(rules) -> None:
    losses = [_row("steady", {"a": 1.10, "b": 1.10, "c": 1.05}), _row("spiky", {"a": 1.60, "b": 0.95, "c": 1.00})]
    baselines = [_row("ce", {"a": 1.0, "b": 1.0, "c": 1.0}), _row("gce", {"a": 1.05, "b": 1.02, "c": 1.08})]
    before = rules.leave_one_task_out(TASKS, WEIGHTS, losses, baselines)
    for held in TASKS:  # any score on the held-out task: the same pick, and its score there moves with it
        changed = [dict(r, norm={**r["norm"], held: 9.0}, raw={**r["raw"], held: 4.5}) for r in losses]
        after = rules.leave_one_task_out(TASKS, WEIGHTS, changed, baselines)
        for rule in rules.RULES:
            assert after[rule][held]["pick"] == before[rule][held]["pick"]
            if after[rule][held]["pick"] in ("steady", "spiky"):
                best = max(b["raw"][held] for b in baselines)
                assert after[rule][held]["vs_best"] == pytest.approx(100 * (4.5 - best))


def test_points_are_against_the_best_baseline_on_the_task_and_the_rule_s_shelf_pick(rules) -> None:
    losses = [_row("found", {"a": 1.2, "b": 1.2, "c": 0.9})]
    baselines = [_row("ce", {"a": 1.0, "b": 1.0, "c": 1.0}), _row("sce", {"a": 0.9, "b": 0.9, "c": 1.3})]
    out = rules.leave_one_task_out(TASKS, WEIGHTS, losses, baselines)
    # held c: the weighted geometric mean over a, b picks "found" (1.2) over ce (1.0) and sce (0.9)
    assert out["geomean"]["c"]["pick"] == "found" and out["geomean"]["c"]["shelf"] == "ce"
    assert out["geomean"]["c"]["vs_best"] == pytest.approx(100 * 0.5 * (0.9 - 1.3))
    assert out["geomean"]["c"]["vs_shelf"] == pytest.approx(100 * 0.5 * (0.9 - 1.0))
    # the worst task over a, c: found 0.9, ce 1.0, sce 0.9: ce, a baseline, is the pick and the shelf's
    assert out["worst"]["b"]["pick"] == out["worst"]["b"]["shelf"] == "ce"
    assert out["worst"]["b"]["vs_shelf"] == 0.0


def test_the_script_reads_a_run_file(rules, tiny_run, capsys) -> None:
    tasks, weights, losses, baselines = rules.read_run(tiny_run)
    assert tasks == ["outliers"] and losses and baselines
    assert all(set(r["norm"]) == set(tasks) == set(r["raw"]) for r in losses + baselines)
    assert len({r["key"] for r in losses}) == len(losses)
    validated = rules.read_validated(tiny_run)  # the tiny run validates its best losses
    assert validated[0] == tasks and validated[2] and {b["name"] for b in validated[3]} <= {b["name"] for b in baselines}
    assert {r["name"] for r in validated[2]} <= {r["name"] for r in losses}
    assert rules.main([str(tiny_run)]) == 2  # one task: nothing can be held out
    assert "needs at least two tasks" in capsys.readouterr().err


def test_a_file_that_is_no_run_gets_one_line(rules, tmp_path, capsys) -> None:
    bogus = tmp_path / "notes.db"
    bogus.write_text("not a run file")
    assert rules.main([str(bogus)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pick_rules: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err
