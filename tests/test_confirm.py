"""The confirm rung: the best structures of a search re-scored on the suite's confirm seeds, ranked by all
their seeds, resumable; the suite key that names the seeds; the default seeding with known losses."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import lossforge
from lossforge.cli import build_parser
from lossforge.engine import Search, SearchConfig
from lossforge.errors import ConfigError
from lossforge.expression import LossExpression
from lossforge.ranking import confirmed_fitness, ranking
from lossforge.runfile import RunStore
from tests.conftest import TINY_SUITE
from lossforge.scoring import join_seeds, load_suite, suite_from_spec

TINY = (Path(__file__).parent / "data" / "tiny_classification.toml").read_text()
CONFIRMED = TINY.replace("validation_seeds = [7, 8]", "validation_seeds = [7, 8]\nconfirm_seeds = [3, 4]")


def _suite_data(**extra: object) -> dict:
    return {"name": "s", "seeds": [0, 1], "validation_seeds": [9],
            "tasks": [{"type": "label_noise", "preset": "symmetric40"}], **extra}


@pytest.mark.parametrize("bad", [[1, 5], [9], [5, 5], ["2"], 3, [True]])
def test_confirm_seeds_must_be_new_distinct_integers(bad: object) -> None:
    with pytest.raises(ConfigError, match="confirm_seeds"):
        suite_from_spec(_suite_data(confirm_seeds=bad))


def test_confirm_seeds_round_trip_and_leave_the_hash() -> None:
    plain = suite_from_spec(_suite_data())
    confirmed = suite_from_spec(_suite_data(confirm_seeds=[2, 3]))
    assert confirmed.confirm_seeds == (2, 3)
    assert suite_from_spec(confirmed.spec()) == confirmed
    assert confirmed.hash == plain.hash  # which losses are re-scored at the end, not what a loss scores
    assert "confirm_seeds" not in plain.spec()
    assert load_suite("robust").confirm_seeds and not set(load_suite("robust").confirm_seeds) & (
        set(load_suite("robust").seeds) | set(load_suite("robust").validation_seeds))


def test_join_seeds_averages_over_all_seeds() -> None:
    suite = suite_from_spec(_suite_data())
    name = suite.tasks[0].name

    def raw(scores: list[float], seeds: list[int]) -> dict:
        return {name: {"scores": scores, "statuses": ["complete"] * len(scores), "seeds": seeds, "note": "x"}}

    mine, ref = join_seeds(raw([0.6], [0]), raw([0.5, 0.7], [3, 4])), join_seeds(raw([0.5], [0]), raw([0.5, 0.5], [3, 4]))
    assert mine[name] == {"scores": [0.6, 0.5, 0.7], "statuses": ["complete"] * 3, "seeds": [0, 3, 4]}
    one = [suite.fitness(raw([a], [0]), raw([b], [0]))[1][name]["normalized"] for a, b in [(0.6, 0.5), (0.5, 0.5),
                                                                                          (0.7, 0.5)]]
    assert suite.fitness(mine, ref)[1][name]["normalized"] == pytest.approx(sum(one) / 3)


@pytest.fixture(scope="module")
def confirmed_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("confirm")
    suite = root / "suite.toml"
    suite.write_text(CONFIRMED)
    run = root / "c.db"
    lossforge.search(run=run, suite=str(suite), population=8, generations=1, jobs=1, confirm_top=3,
                     validate_top=2, quiet=True)
    return run


def test_the_best_structures_are_confirmed_and_ranked_by_all_seeds(confirmed_run: Path) -> None:
    with RunStore.open(confirmed_run, readonly=True) as store:
        best = store.best(10**9)
        expected: dict[str, str] = {}
        for rec in best:  # best first, one per structure, three of them
            if len(expected) < 3:
                expected.setdefault(rec.structure_key, rec.key)
        done = store.confirmations()
        assert set(done) == set(expected.values()) | {"baseline:cross_entropy"}
        assert all(raw["noisy_digits"]["seeds"] == [3, 4] for raw in done.values())
        conf = confirmed_fitness(store)
        assert set(conf) == set(expected.values())
        chosen = ranking(store, validation=False)
        assert [x.record.key for x in chosen[:3]] == sorted(conf, key=lambda k: -conf[k])
        assert all(x.confirmed_fitness is None for x in chosen[3:])
        # the two validated are the two best by confirmed fitness, and rank first in the full ranking
        validated = set(store.validations()) - {k for k in store.validations() if k.startswith("baseline:")}
        assert validated == {x.record.key for x in chosen[:2]}
        assert {x.record.key for x in ranking(store)[:2]} == validated
        top = chosen[0]
    # the confirmed fitness is the loss scored on the search and confirm seeds together
    suite = load_suite(str(confirmed_run.parent / "suite.toml"))
    row = lossforge.score([LossExpression(tuple(top.record.tree))], suite, seeds=[0, 3, 4], baselines=[], jobs=1)[0]
    assert row.fitness == pytest.approx(top.confirmed_fitness, rel=1e-9)


def test_show_csv_and_markdown_carry_the_confirmed_column(confirmed_run: Path, capsys: pytest.CaptureFixture) -> None:
    import csv
    import io
    import json

    from lossforge.cli import main

    assert main(["show", str(confirmed_run), "--json"]) == 0
    hof = json.loads(capsys.readouterr().out)["hall_of_fame"]
    assert main(["show", str(confirmed_run), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [float(r["confirmed_fitness"]) if r["confirmed_fitness"] else None for r in rows] == \
        [h["confirmed_fitness"] for h in hof]
    assert sum(r["confirmed_fitness"] != "" for r in rows) == 3  # the three confirmed structures
    assert main(["show", str(confirmed_run), "--format", "markdown"]) == 0
    assert capsys.readouterr().out.startswith("| rank | fitness | confirmed | validation | complexity |")


def test_confirming_again_trains_nothing(confirmed_run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "again.db"
    copy.write_bytes(confirmed_run.read_bytes())
    engine = Search.resume(copy, quiet=True)
    try:
        before = engine.store.confirmations()

        def no_training(*args: object, **kwargs: object) -> None:
            raise AssertionError("a confirmed loss was trained again")

        engine._score_specs = no_training  # type: ignore[method-assign]
        engine.confirm()
        assert engine.store.confirmations() == before
    finally:
        engine.close()


def test_seeding_is_the_default_and_can_be_turned_off() -> None:
    assert SearchConfig().seed_baselines is True
    args = build_parser().parse_args(["search", "--no-seed-baselines"])
    assert args.seed_baselines is False
    assert build_parser().parse_args(["search"]).seed_baselines is True
    with pytest.raises(ConfigError, match="confirm_top"):
        SearchConfig(confirm_top=-1)


def test_the_budget_line_names_the_confirm_rung(tmp_path: Path) -> None:
    suite = tmp_path / "suite.toml"
    suite.write_text(CONFIRMED)
    plain = tmp_path / "plain.toml"
    plain.write_text(TINY)
    lines = []
    for path, name in ((suite, "c.db"), (plain, "p.db")):
        engine = Search.create(tmp_path / name, SearchConfig(suite=str(path), population=4, generations=1, jobs=1))
        try:
            lines.append(engine.budget_line())
        finally:
            engine.close()
    assert lines[0].endswith("then the best 10 structures confirmed on 2 more seeds")
    assert "confirmed" not in lines[1]


def test_tuning_says_what_it_did_with_each_of_the_best(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # a space without constants: none of the best losses has anything to tune, and the run says so
    space = tmp_path / "plain.toml"
    space.write_text('name = "plain"\noperators = ["plus", "minus", "multiply", "sqrt"]\n'
                     '[terminals]\nvariables = ["y_pred", "y_real"]\nconstants = false\n'
                     '[limits]\ninit_min_depth = 1\ninit_max_depth = 3\nmax_depth = 5\nmax_nodes = 20\n')
    lossforge.search(run=tmp_path / "p.db", suite=TINY_SUITE, space=str(space), population=4, generations=1,
                     jobs=1, executor="serial", validate_top=0, tune_top=3, seed=2)
    out = capsys.readouterr()
    said = re.search(r"tuning the best (\d) loss\(es\): (.*)", out.out + out.err)
    assert said and int(said.group(1)) >= 2 and said.group(2) == f"{said.group(1)} without constants"


def test_tuned_variants_are_confirmed(tmp_path: Path) -> None:
    suite = tmp_path / "suite.toml"
    suite.write_text(CONFIRMED)
    run = tmp_path / "t.db"
    lossforge.search(run=run, suite=str(suite), population=8, generations=1, jobs=1, confirm_top=1,
                     validate_top=0, tune_top=3, quiet=True, seed=1)
    with RunStore.open(run, readonly=True) as store:
        tuned = [c for c in store.candidates() if (c.reason or "").startswith("tuned from")]
        assert tuned  # this seed's tuning improves a loss, so the check below can tell the order apart
        best = store.best(1)[0]
        assert best.key in {c.key for c in tuned}
        assert set(store.confirmations()) == {best.key, "baseline:cross_entropy"}
