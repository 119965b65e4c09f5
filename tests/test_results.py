"""Results as data: lossforge.open_run, and the --json / --format outputs of show, score and baselines."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from pathlib import Path

import pytest
import sympy
import torch

import lossforge
from lossforge.cli import main
from lossforge.errors import RunError
from lossforge.ranking import ranking
from lossforge.runfile import CandidateState, RunStore

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "tests/data/tiny_suite.toml")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("results") / "r.db"
    lossforge.search(run=path, suite=TINY, population=6, generations=2, chunk_size=4, jobs=1,
                     executor="serial", quiet=True)
    return path


def test_open_run_hall_of_fame_follows_the_final_ranking(run: Path) -> None:
    result = lossforge.open_run(run)
    records = result.hall_of_fame(n=None, as_frame=False)
    with RunStore.open(run, readonly=True) as store:
        ranked = ranking(store)
        candidates = store.candidates()
    assert [r["formula"] for r in records] == [x.record.formula for x in ranked]
    assert [r["validation_fitness"] for r in records] == [x.validation_fitness for x in ranked]
    assert [r["rank"] for r in records] == list(range(1, len(ranked) + 1))
    assert all(r["outliers"] == x.record.task_scores["outliers"]["normalized"] for r, x in zip(records, ranked))
    assert len(result.candidates(as_frame=False)) == len(candidates)
    assert [g["gen"] for g in result.generations(as_frame=False)] == [0, 1, 2]


def test_open_run_gives_dataframes_when_pandas_is_installed(run: Path) -> None:
    pd = pytest.importorskip("pandas")
    result = lossforge.open_run(run)
    frame = result.hall_of_fame()
    assert isinstance(frame, pd.DataFrame)
    assert list(frame["formula"]) == [r["formula"] for r in result.hall_of_fame(as_frame=False)]
    assert isinstance(result.generations(), pd.DataFrame) and isinstance(result.candidates(), pd.DataFrame)
    assert set(result.candidates()["status"]) <= {s.value for s in CandidateState}


def test_each_loss_exports_to_sympy_torch_and_latex(run: Path) -> None:
    best = lossforge.open_run(run).loss(1)
    module = best.torch(reduction="none", problem="regression")
    assert isinstance(module, torch.nn.Module)
    pred, target = torch.tensor([0.5, 2.0, -1.0]), torch.tensor([1.0, 1.5, 0.3])
    expected = lossforge.SymbolicLoss(list(best.tokens), reduction="none", problem="regression")
    assert torch.equal(module(pred, target), expected(pred, target))
    assert isinstance(best.sympy(), sympy.Expr)
    assert {s.name for s in best.sympy().free_symbols} <= {"y_pred", "y_real"}
    assert best.latex() and "y_{" in best.latex()


def test_open_run_refuses_a_missing_run_and_a_missing_rank(run: Path, tmp_path: Path) -> None:
    with pytest.raises(RunError, match="no run at"):
        lossforge.open_run(tmp_path / "missing.db")
    with pytest.raises(RunError, match="rank 999"):
        lossforge.open_run(run).loss(999)


def test_open_run_refuses_a_negative_or_non_integer_row_count(run: Path) -> None:
    """hall_of_fame(-1) sliced the last loss off the ranking (all but one row, no error); "x" was a TypeError."""
    from lossforge.errors import ConfigError

    opened = lossforge.open_run(run)
    everything = opened.hall_of_fame(None, as_frame=False)
    assert len(opened.hall_of_fame(10 ** 6, as_frame=False)) == len(everything) > 1
    assert opened.hall_of_fame(0, as_frame=False) == []
    for bad in (-1, "x", 1.5, True):
        with pytest.raises(ConfigError, match="non-negative integer"):
            opened.hall_of_fame(bad)
        with pytest.raises(ConfigError, match="non-negative integer"):
            opened.to_dict(top=bad)
    with pytest.raises(ConfigError):
        opened.rejection_reasons(-2)
    with pytest.raises(RunError, match="a path or file name"):
        lossforge.open_run(3)  # type: ignore[arg-type]


def test_show_json_carries_the_counts_hall_of_fame_and_baselines(run: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["show", str(run), "--json", "--top", "3"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {"run", "status", "elapsed_s", "proposed", "screened", "trained", "hall_of_fame", "baselines"} <= set(doc)
    with RunStore.open(run, readonly=True) as store:
        candidates = store.candidates()
        ranked = ranking(store, 3)
        screened = {s["key"] for s in store.screenings()}  # racing's first rung (lower fidelity)
    assert doc["status"] == "finished" and doc["run"] == str(run)
    assert doc["proposed"] == len({c.key for c in candidates} | screened)
    trained = {c.key for c in candidates if c.status in (CandidateState.COMPLETE, CandidateState.FAILED)}
    assert doc["trained"] == len(trained)
    assert doc["screened"] == len(trained | screened) > doc["trained"]  # the default search races
    assert len(doc["hall_of_fame"]) == 3
    for entry, item in zip(doc["hall_of_fame"], ranked):
        assert set(entry) == {"rank", "formula", "tokens", "fitness", "validation_fitness", "confirmed_fitness",
                              "complexity", "same_as", "tasks"}
        assert entry["tokens"] == list(item.record.tree) and entry["fitness"] == item.record.fitness
        assert lossforge.LossExpression(entry["tokens"]).key == item.record.key  # tokens rebuild the loss
    assert {"mse", "mae", "huber"} <= {b["name"] for b in doc["baselines"]}
    assert all({"name", "fitness", "validation_fitness"} <= set(b) for b in doc["baselines"])
    assert main(["show", str(run), "--format", "json", "--top", "3"]) == 0
    assert json.loads(capsys.readouterr().out) == doc


def test_show_csv_and_markdown(run: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["show", str(run), "--format", "csv", "--top", "4"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    expected = lossforge.open_run(run).hall_of_fame(4, as_frame=False)
    assert [r["formula"] for r in rows] == [e["formula"] for e in expected]
    assert [float(r["fitness"]) for r in rows] == [e["fitness"] for e in expected]
    assert main(["show", str(run), "--format", "markdown", "--top", "4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| rank | fitness | validation |") and len(lines) == 2 + 4
    assert lines[1] == "|" + "---|" * lines[0].count(" | ") + "---|"
    assert all(line.startswith("| ") and line.endswith(" |") for line in lines[2:])


def test_score_and_baselines_json(capsys: pytest.CaptureFixture) -> None:
    assert main(["score", "(y_pred - y_real)**2", "--suite", TINY, "--baselines", "mae", "--seeds", "2",
                 "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [(r["name"], r["baseline"]) for r in rows] == [("loss 1", False), ("mae", True)]
    for r in rows:
        assert {"name", "baseline", "formula", "fitness", "ci", "tasks"} <= set(r)
        assert r["fitness"] == pytest.approx(sum(r["per_seed"]) / 2) and r["ci"] is not None and r["ci"] >= 0
        assert set(r["tasks"]) == {"outliers"} and len(r["tasks"]["outliers"]["scores"]) == 2
    # (y_pred - y_real)**2 is the suite's reference loss, MSE: fitness 1 on every seed
    assert rows[0]["per_seed"] == [pytest.approx(1.0)] * 2
    for empty in ("", ",,"):  # no baseline: the loss alone, whichever way it is written
        assert main(["score", "(y_pred - y_real)**2", "--suite", TINY, "--baselines", empty, "--json"]) == 0
        assert [r["name"] for r in json.loads(capsys.readouterr().out)["rows"]] == ["loss 1"]
    assert main(["baselines", "--suite", TINY, "--json"]) == 0
    base = json.loads(capsys.readouterr().out)["rows"]
    assert base and all(r["baseline"] for r in base) and "mse" in {r["name"] for r in base}


def test_score_json_carries_the_paired_comparison_the_table_prints(capsys: pytest.CaptureFixture) -> None:
    # `score --json --against NAME` left out the comparison the table prints under it
    from lossforge.stats import paired_comparison

    args = ["score", "(y_pred - y_real)**2 + 0.3*sqrt((y_pred - y_real)**2)", "--suite", TINY, "--baselines", "",
            "--seeds", "3", "--against", "mae"]
    assert main(args + ["--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["rows"]}
    loss, mae = rows["loss 1"], rows["mae"]
    assert mae["against"] is None
    want = paired_comparison(loss["per_seed"], mae["per_seed"])
    got = loss["against"]
    assert got["baseline"] == "mae" and got["seeds"] == 3
    assert got["mean_diff"] == pytest.approx(want.mean_diff) and got["ci"] == pytest.approx(want.ci_half_width)
    assert got["p"] == pytest.approx(want.p_value)
    task = paired_comparison(loss["tasks"]["outliers"]["scores"], mae["tasks"]["outliers"]["scores"])
    assert got["tasks"]["outliers"]["mean_diff"] == pytest.approx(task.mean_diff)
    assert main(args) == 0  # the table prints the same difference
    assert f"loss 1 fitness - mae: {want.summary()}" in capsys.readouterr().out


def test_show_says_when_the_search_returned_a_known_loss(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # population 3 on the one-task regression suite: generation 0 is the 3 seeded known losses (MSE, MAE,
    # Huber-like), so every ranked loss is one of them, and rank 1 is said to be it
    path = tmp_path / "known.db"
    lossforge.search(run=path, suite=TINY, population=3, generations=1, jobs=1, executor="serial", quiet=True)
    assert main(["show", str(path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    known = [e for e in doc["hall_of_fame"] if e["same_as"] is not None]
    assert known and doc["hall_of_fame"][0] in known
    for entry in known:
        assert entry["same_as"]["name"] in {"mse", "mae", "huber"} and entry["same_as"]["scale"] > 0
    for entry in doc["hall_of_fame"]:
        if entry["same_as"] is None:  # a new loss: its gradient is no positive multiple of a known one's
            assert lossforge.LossExpression(entry["tokens"]).key not in {
                lossforge.LossExpression.parse(f).key for f in ("(y_pred - y_real)**2", "sqrt((y_pred - y_real)**2)")}
    assert main(["show", str(path)]) == 0
    out = capsys.readouterr().out
    first = doc["hall_of_fame"][0]["same_as"]["name"]
    assert f"rank 1 trains as the known loss {first}" in out
    frame = lossforge.open_run(path).hall_of_fame(as_frame=False)
    assert frame[0]["same_as"] == first
    # the CSV and Markdown views say it too, as the table does
    assert main(["show", str(path), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    from lossforge.baselines import known_loss_text

    assert len(rows) == len(doc["hall_of_fame"])
    for entry, row in zip(doc["hall_of_fame"], rows):
        same = entry["same_as"]
        assert row["same_as"] == ("" if same is None else known_loss_text(same["name"], same["scale"]))
        assert row["formula"] == entry["formula"]
    assert rows[0]["same_as"].endswith(first)
    assert main(["show", str(path), "--format", "markdown"]) == 0
    assert f"(= {rows[0]['same_as']})" in capsys.readouterr().out.splitlines()[2]


def test_show_pairs_rank_1_with_the_best_baseline_on_the_validation_seeds(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    suite = tmp_path / "two.toml"  # two validation seeds, so the comparison has a spread
    suite.write_text(Path(TINY).read_text().replace("validation_seeds = [7]", "validation_seeds = [7, 8]"))
    path = tmp_path / "v.db"
    lossforge.search(run=path, suite=str(suite), population=6, generations=1, jobs=1, executor="serial", quiet=True)
    assert main(["show", str(path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    versus = doc["rank1_vs_best_baseline"]
    validated = [b for b in doc["baselines"] if b["validation_fitness"] is not None]
    assert versus["baseline"] == max(validated, key=lambda b: b["validation_fitness"])["name"]
    assert versus["seeds"] == 2 and versus["ci"] is not None and 0 <= versus["p"] <= 1
    # the same difference as scoring rank 1 and that baseline afresh on the validation seeds
    rows = lossforge.score([lossforge.LossExpression(doc["hall_of_fame"][0]["tokens"])], str(suite), seeds=[7, 8],
                           baselines=[versus["baseline"]], jobs=1)
    assert versus["mean_diff"] == pytest.approx(sum(rows[0].per_seed) / 2 - sum(rows[1].per_seed) / 2, rel=1e-9)
    # a tampered file whose rank 1 lost a validation seed: one clear line, exit 2, no traceback
    key = lossforge.LossExpression(doc["hall_of_fame"][0]["tokens"]).key
    conn = sqlite3.connect(path)
    conn.execute("UPDATE results SET task_scores = json_remove(task_scores, '$.outliers.scores[1]', "
                 "'$.outliers.seeds[1]', '$.outliers.statuses[1]', '$.outliers.reasons[1]') "
                 "WHERE kind = 'validation' AND fidelity = 'full' AND name = ?", (key,))
    conn.commit()
    conn.close()
    assert main(["show", str(path), "--json"]) == 2  # --json pairs rank 1 whether or not it is a known loss
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "malformed" in err and "Traceback" not in err


def test_the_line_under_the_ranking_says_when_a_gain_is_not_clear() -> None:
    from lossforge.cli import versus_line
    from lossforge.ranking import Versus
    from lossforge.stats import paired_comparison

    clear = versus_line(Versus("gce", paired_comparison([1.10, 1.11, 1.12, 1.10], [1.05, 1.05, 1.06, 1.04])))
    assert clear.startswith("rank 1 against gce, the best baseline on the validation seeds: +0.0575") \
        and "no clear gain" not in clear and "flatters it" in clear
    noisy = versus_line(Versus("gce", paired_comparison([1.10, 1.00, 1.12, 1.02], [1.05, 1.05, 1.06, 1.04])))
    assert "no clear gain over gce" in noisy and "`lossforge score` it beside gce" in noisy
    worse = versus_line(Versus("gce", paired_comparison([1.00, 1.01, 1.00, 1.02], [1.05, 1.05, 1.06, 1.04])))
    assert "no clear gain over gce" in worse  # significantly worse is no gain either


def test_show_parses_the_stored_suite_once_per_open_run_file(run: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture) -> None:
    import lossforge.ranking as ranking_module

    calls = []
    real = ranking_module.suite_from_spec
    monkeypatch.setattr(ranking_module, "suite_from_spec", lambda *a, **k: calls.append(1) or real(*a, **k))
    for args in (["show", str(run)], ["show", str(run), "--json"]):
        calls.clear()
        assert main(args) == 0
        assert len(calls) == 1, args  # the ranking, baselines and rank-1 comparison share one parse
    capsys.readouterr()
    # a store whose stored suite changed (as a second process would write it) is parsed again, not served stale
    with RunStore.open(run, readonly=True) as store:
        calls.clear()
        first = ranking_module.suite_of(store)
        spec = store.config()["suite"]
        monkeypatch.setattr(store, "config", lambda: {"suite": {**spec, "description": "edited"}})
        assert ranking_module.suite_of(store) is not first and len(calls) == 2
