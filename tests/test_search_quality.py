"""scripts/search_quality.py: the study's verdicts, and a smoke run of the whole script on tiny suites."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import load_script


@pytest.fixture(scope="module")
def quality():
    return load_script("search_quality")


def _entry(per_seed: list[float], task_scores: list[float]) -> dict:
    return {"fitness": sum(per_seed) / len(per_seed), "ci": 0.0, "per_seed": per_seed,
            "tasks": {"label_noise": {"mean": sum(task_scores) / len(task_scores), "scores": task_scores}}}


def test_verdicts_compare_gp_with_random_and_the_best_baseline(quality) -> None:
    runs = [{"arm": arm, "seed": s} for s in range(3) for arm in ("gp", "random")]
    validation = {
        "cross_entropy": _entry([1.0, 1.0], [0.80, 0.80]),
        "anl_ce": _entry([1.10, 1.12], [0.90, 0.92]),
        "gp s0": _entry([1.20, 1.22], [0.95, 0.95]), "random s0": _entry([1.0, 1.1], [0.8, 0.8]),
        "gp s1": _entry([1.05, 1.07], [0.83, 0.83]), "random s1": _entry([1.1, 1.1], [0.9, 0.9]),
        "gp s2": _entry([1.15, 1.15], [0.88, 0.88]), "random s2": _entry([0.9, 0.9], [0.7, 0.7]),
    }
    c = quality.compare(runs, validation, {}, ["cross_entropy", "anl_ce"])
    assert c["best_baseline_validation"] == "anl_ce"
    assert c["median_gp_validation_fitness"] == pytest.approx(1.15)
    assert c["median_gp_ge_best_baseline"] is True
    assert c["accuracy_gain_over_ce"]["at_least_5_points"] == 2  # +15 and +8 points; +3 is not enough
    r = c["gp_vs_random"]
    assert (r["search_seeds"], r["gp_wins"], r["random_wins"]) == (3, 2, 1)
    assert r["sign_test_p"] == pytest.approx(1.0)  # 2 of 3 is no evidence either way
    assert c["gp_vs_best_baseline"]["gp s1"]["mean_diff"] < 0 < c["gp_vs_best_baseline"]["gp s0"]["mean_diff"]
    assert "gp_vs_random_transfer" not in c  # no transfer table, no transfer comparison


def test_gp_and_random_are_compared_on_the_transfer_fitness_too(quality) -> None:
    runs = [{"arm": arm, "seed": s} for s in range(2) for arm in ("gp", "random")]
    validation = {"cross_entropy": _entry([1.0, 1.0], [0.8, 0.8]), "gp s0": _entry([1.2, 1.2], [0.9, 0.9]),
                  "random s0": _entry([1.1, 1.1], [0.9, 0.9]), "gp s1": _entry([1.2, 1.2], [0.9, 0.9]),
                  "random s1": _entry([1.1, 1.1], [0.9, 0.9])}
    transfer = {"cross_entropy": _entry([1.0, 1.0], [0.70, 0.70]), "gp s0": _entry([1.0, 1.1], [0.72, 0.74]),
                "random s0": _entry([1.2, 1.2], [0.80, 0.80]), "gp s1": _entry([1.3, 1.3], [0.75, 0.77]),
                "random s1": _entry([1.1, 1.1], [0.74, 0.74])}
    c = quality.compare(runs, validation, transfer, ["cross_entropy"])
    assert (c["gp_vs_random"]["gp_wins"], c["gp_vs_random"]["random_wins"]) == (2, 0)
    t = c["gp_vs_random_transfer"]
    assert (t["search_seeds"], t["gp_wins"], t["random_wins"]) == (2, 1, 1)
    assert t["mean_diff"] == pytest.approx(((1.05 - 1.2) + (1.3 - 1.1)) / 2)
    per_task = c["transfer"]["per_task"]["label_noise"]
    assert per_task["median_gp"] == pytest.approx((0.73 + 0.76) / 2) and per_task["best_baseline"] == "cross_entropy"
    for name, entry in validation.items():
        entry["formula"] = name
    text = quality.markdown({"suite": "s", "seeds": [0, 1], "search_settings": {}, "validation_seeds": [9],
                             "transfer_suite": "t", "runs": [], "report_s": 0.0, "random_control": None,
                             "validation": validation, "transfer": transfer, "comparison": c})
    assert "(transfer fitness): GP better on 1, random on 1" in text
    assert "| label_noise | 0.7450 | cross_entropy | 0.7000 | +0.0450 | 0.7000 | +0.0450 |" in text


def test_transfer_is_also_compared_with_the_baseline_a_user_would_pick(quality) -> None:
    # the per-task best is picked after the fact (here mae on one task, anl_ce on the other); a user picks
    # one loss beforehand, by the search suite's validation: there anl_ce leads
    runs = [{"arm": "gp", "seed": s} for s in range(3)]
    validation = {"mae": _entry([0.9], [0.7]), "anl_ce": _entry([1.1], [0.8]),
                  **{f"gp s{s}": _entry([1.0], [0.8]) for s in range(3)}}

    def two_tasks(a: float, b: float) -> dict:
        return {"fitness": 1.0, "ci": 0.0, "per_seed": [1.0], "tasks": {"t1": {"mean": a}, "t2": {"mean": b}}}

    transfer = {"mae": two_tasks(0.90, 0.50), "anl_ce": two_tasks(0.70, 0.80),
                "gp s0": two_tasks(0.60, 0.70), "gp s1": two_tasks(0.80, 0.90), "gp s2": two_tasks(0.75, 0.60)}
    c = quality.compare(runs, validation, transfer, ["mae", "anl_ce"], holdouts={"holdout": transfer})
    t = c["transfer"]
    assert c["holdout"] == t  # a further held-out suite's verdict is computed the same way
    assert t["validation_best_baseline"] == "anl_ce"
    assert t["per_task"]["t1"]["best_baseline"] == "mae" and t["per_task"]["t2"]["best_baseline"] == "anl_ce"
    assert t["mean_difference"] == pytest.approx(((0.75 - 0.90) + (0.70 - 0.80)) / 2)
    assert t["mean_difference_to_validation_best"] == pytest.approx(((0.75 - 0.70) + (0.70 - 0.80)) / 2)


def test_dry_run_writes_the_table_and_every_number(quality, tmp_path: Path, capsys) -> None:
    assert quality.main(["--dry-run", "--seeds", "2", "--out", str(tmp_path), "--jobs", "1"]) == 0
    result = json.loads((tmp_path / "search_quality.json").read_text())
    arms = {(r["arm"], r["seed"]) for r in result["runs"]}
    assert {("gp", 0), ("gp", 1)} <= arms
    if result["random_control"] is None:
        assert {("random", 0), ("random", 1)} <= arms and "gp_vs_random" in result["comparison"]
    else:
        assert "random-search control skipped" in capsys.readouterr().out
    for table in (result["validation"], result["transfer"], result["holdouts"]["quality_dry_holdout"]):
        assert {"gp s0", "gp s1", "cross_entropy", "anl_ce"} <= set(table)
        assert len(table["gp s0"]["per_seed"]) == 2  # the dry suites' validation / held-out seeds
    assert result["comparison"]["best_baseline_validation"] in result["validation"]
    assert set(result["comparison"]["quality_dry_holdout"]["per_task"]) == {"wine_sym40"}
    text = (tmp_path / "search_quality.md").read_text()
    assert "| gp s0 |" in text and "Best baseline on validation" in text and "**Quality_dry_holdout**" in text


def test_the_holdout_phase_adds_its_table_and_scores_nothing_else(quality, tmp_path: Path, monkeypatch) -> None:
    assert quality.main(["--dry-run", "--seeds", "1", "--out", str(tmp_path), "--jobs", "1", "--holdout", ""]) == 0
    before = json.loads((tmp_path / "search_quality.json").read_text())
    assert before["holdouts"] == {} and "quality_dry_holdout" not in before["comparison"]
    scored = []
    real_score_all = quality.score_all
    monkeypatch.setattr(quality, "score_all", lambda runs, names, tuned, suite, seeds, jobs: scored.append(
        suite.name) or real_score_all(runs, names, tuned, suite, seeds, jobs))
    assert quality.main(["--dry-run", "--seeds", "1", "--out", str(tmp_path), "--jobs", "1",
                         "--phase", "holdout"]) == 0
    after = json.loads((tmp_path / "search_quality.json").read_text())
    assert scored == ["quality_dry_holdout"]  # validation and transfer are kept as written
    assert after["validation"] == before["validation"] and after["transfer"] == before["transfer"]
    assert list(after["holdouts"]) == ["quality_dry_holdout"]
    assert set(after["holdouts"]["quality_dry_holdout"]) == set(before["transfer"])
    assert after["comparison"]["transfer"] == before["comparison"]["transfer"]
    assert "**Quality_dry_holdout**" in (tmp_path / "search_quality.md").read_text()


def test_a_further_held_out_suite_is_kept_beside_those_a_report_has(quality, tmp_path: Path, monkeypatch) -> None:
    # a report written when it could hold one held-out table (``holdout``, ``holdout_suite``, ``holdout_s``)
    assert quality.main(["--dry-run", "--seeds", "1", "--out", str(tmp_path), "--jobs", "1"]) == 0
    path = tmp_path / "search_quality.json"
    written = json.loads(path.read_text())
    old = dict(written, holdout=written["holdouts"]["quality_dry_holdout"], holdout_suite="quality_dry_holdout",
               holdout_s=12.5)
    del old["holdouts"]
    path.write_text(json.dumps(old))
    other = tmp_path / "other.toml"
    other.write_text(quality.DRY_HOLDOUT.replace('name = "quality_dry_holdout"', 'name = "other_holdout"'))
    monkeypatch.setattr(quality, "DRY_HOLDOUT", other.read_text())  # the dry run writes its suite each time
    assert quality.main(["--dry-run", "--seeds", "1", "--out", str(tmp_path), "--jobs", "1",
                         "--phase", "holdout"]) == 0
    after = json.loads(path.read_text())
    assert "holdout" not in after and list(after["holdouts"]) == ["quality_dry_holdout", "other_holdout"]
    assert after["holdouts"]["quality_dry_holdout"] == old["holdout"]  # the older table is kept as it was
    assert after["holdout_s"]["quality_dry_holdout"] == 12.5 and after["holdout_s"]["other_holdout"] > 0
    assert {"quality_dry_holdout", "other_holdout"} <= set(after["comparison"])
    text = (tmp_path / "search_quality.md").read_text()
    assert "quality_dry_holdout fitness | other_holdout fitness |" in text
    assert "**Quality_dry_holdout**" in text and "**Other_holdout**" in text


def test_the_holdout_phase_needs_a_report_and_a_suite(quality, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as e:
        quality.main(["--out", str(tmp_path), "--phase", "holdout"])
    assert e.value.code == 2 and not (tmp_path / "search_quality.json").exists()
    with pytest.raises(SystemExit):
        quality.main(["--out", str(tmp_path), "--phase", "holdout", "--holdout", ""])


def test_a_stopped_study_picks_up_where_it_stopped(quality, tmp_path: Path, monkeypatch) -> None:
    import lossforge

    assert quality.main(["--dry-run", "--seeds", "1", "--out", str(tmp_path), "--jobs", "1",
                         "--phase", "searches"]) == 0
    recorded = json.loads((tmp_path / "runs.json").read_text())
    assert {(r["arm"], r["seed"]) for r in recorded} >= {("gp", 0)} and all(r["status"] == "finished"
                                                                              for r in recorded)
    assert not (tmp_path / "search_quality.json").exists()  # the searches phase reports nothing yet

    def no_new_search(*args, **kwargs):
        raise AssertionError("a recorded search was run again")

    monkeypatch.setattr(lossforge, "search", no_new_search)
    # one more seed: seed 0 is taken from runs.json, seed 1's searches run (here: refused, so seed 1 fails)
    with pytest.raises(AssertionError, match="run again"):
        quality.main(["--dry-run", "--seeds", "2", "--out", str(tmp_path), "--jobs", "1"])
    # the report phase scores what is recorded without searching
    assert quality.main(["--dry-run", "--seeds", "1", "--out", str(tmp_path), "--jobs", "1", "--phase", "report"]) == 0
    result = json.loads((tmp_path / "search_quality.json").read_text())
    assert [r["formula"] for r in result["runs"]] == [r["formula"] for r in recorded]
    assert (tmp_path / "tuned.json").exists()


def test_the_transfer_bar_is_measured_for_each_baseline_and_without_the_winners_curse(quality) -> None:
    def task(scores: list[float]) -> dict:
        return {"mean": sum(scores) / len(scores), "scores": scores}

    # two tasks, three seeds; a wins t1, b wins t2, c is middling on both
    transfer = {"a": {"tasks": {"t1": task([0.9, 0.8, 0.7]), "t2": task([0.5, 0.5, 0.5])}},
                "b": {"tasks": {"t1": task([0.6, 0.6, 0.6]), "t2": task([0.7, 0.9, 0.8])}},
                "c": {"tasks": {"t1": task([0.72, 0.7, 0.9]), "t2": task([0.6, 0.6, 0.6])}}}
    bar = quality.transfer_bar(transfer, ["a", "b", "c"])
    gaps = bar["single_baseline_gaps"]
    assert gaps["a"] == pytest.approx(((0.8 - 0.7733) + (0.5 - 0.8)) / 2, abs=1e-4)  # against the best of b, c
    assert gaps["c"] == pytest.approx(((0.7733 - 0.8) + (0.6 - 0.8)) / 2, abs=1e-4)
    # t1, seed 0 left out: on seeds 1 and 2 c (1.6) beats a (1.5), so c's 0.72 counts; seed 1: c (1.62) over
    # a (1.6), 0.7; seed 2: a (1.7) over c (1.42), 0.7. After the fact the bar is a's 0.8; held out, lower
    assert bar["held_out_best"]["t1"] == pytest.approx((0.72 + 0.7 + 0.7) / 3)
    assert bar["held_out_best"]["t2"] == pytest.approx(0.8)  # b wins every split
    del transfer["c"]["tasks"]["t1"]["scores"]
    assert "held_out_best" not in quality.transfer_bar(transfer, ["a", "b", "c"])  # no per-seed scores, no figure


def test_rank_agreement_counts_each_loss_once(quality) -> None:
    def entry(fitness: float, formula: str) -> dict:
        return {"fitness": fitness, "formula": formula}

    validation = {"a": entry(1.0, "a"), "b": entry(1.1, "b"), "c": entry(1.2, "c"), "d": entry(1.3, "d"),
                  "gp s0": entry(1.25, "x"), "random s0": entry(1.1, "b")}  # random s0 found b itself
    same = {n: entry(e["fitness"], e["formula"]) for n, e in validation.items()}
    reversed_ = {n: entry(-e["fitness"], e["formula"]) for n, e in validation.items()}
    assert quality.rank_agreement(validation, same)["all"]["rho"] == pytest.approx(1.0)
    agree = quality.rank_agreement(validation, reversed_)
    assert agree["all"] == {"rho": pytest.approx(-1.0), "p": agree["all"]["p"], "losses": 5}  # b once
    assert agree["baselines"]["losses"] == 4
    assert quality.rank_agreement(validation, {"a": entry(1.0, "a")}) == {}  # too few to rank
    # the same loss under another formula (a seeded baseline as a search returns it): the same scores
    scored = {n: {"fitness": f, "per_seed": [f, f + 0.01]} for n, f in (("gce", 1.1), ("gp s1", 1.1), ("mae", 0.9),
                                                                        ("ce", 1.0))}
    assert quality.rank_agreement(scored, scored)["all"]["losses"] == 3


def test_a_held_out_suite_scores_the_reports_own_tuned_baselines(quality) -> None:
    # tuning again at a later version need not give the same losses: the report's are scored, by their spec,
    # or (a report written before specs were stored) by their formula, parsed without evaluating anything
    report = {"tuned_baselines": [
        {"name": "gce", "formula": "1.681*y_real*(0.85 - exp(0.595*log(y_pred)))",
         "tuning_fitness_before": 1.03, "tuning_fitness_after": 1.05},
        {"name": "nce_rce", "formula": "nce_rce(alpha=1.17, beta=8.212)",
         "tuning_fitness_before": 0.88, "tuning_fitness_after": 0.89},
        {"name": "sce", "formula": "9.4*y_real", "spec": ["multiply", 9.377, "y_real"],
         "tuning_fitness_before": 0.99, "tuning_fitness_after": 1.05}]}
    gce, nce_rce, sce = quality.report_tuned(report)
    assert gce.spec == ["multiply", "multiply", 1.681, "y_real", "minus", 0.85, "exp", "multiply", 0.595, "log",
                        "y_pred"]
    assert nce_rce.spec == "nce_rce(alpha=1.17, beta=8.212)" and sce.spec == ["multiply", 9.377, "y_real"]
    report["tuned_baselines"][0]["formula"] = "__import__('os').system('true')"
    with pytest.raises(Exception, match="(?i)not|unknown|allowed"):
        quality.report_tuned(report)
