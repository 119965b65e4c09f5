"""The one scoring path (Evaluator), the strategies, callbacks and the typed entry points."""

from __future__ import annotations

import inspect
from dataclasses import fields
from pathlib import Path

import pytest

import lossforge
from lossforge import api
from lossforge.cli import build_parser
from lossforge.engine import SearchConfig
from lossforge.evaluator import FULL, Evaluator, Fidelity
from lossforge.expression import LossExpression
from lossforge.scoring import load_suite
from lossforge.runfile import RunStore


def test_search_keywords_are_the_config_fields_with_its_defaults() -> None:
    params = inspect.signature(lossforge.search).parameters
    for f in fields(SearchConfig):
        assert params[f.name].default == f.default, f.name
        assert params[f.name].kind is inspect.Parameter.KEYWORD_ONLY
    with pytest.raises(TypeError, match=r"'populaton'.*did you mean 'population'.*valid: .*generations"):
        lossforge.search(populaton=4)


def test_cli_options_are_generated_from_the_config() -> None:
    search = next(a for a in build_parser()._subparsers._group_actions[0].choices.items() if a[0] == "search")[1]
    dests = {a.dest: a for a in search._actions}
    for f in fields(SearchConfig):
        assert f.name in dests, f.name
        assert dests[f.name].default == f.default
        assert f.metadata["help"] in dests[f.name].help
    args = build_parser().parse_args(["search"])
    assert SearchConfig(**{f.name: getattr(args, f.name) for f in fields(SearchConfig)}) == SearchConfig()


class _Counting(Evaluator):
    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.trained: list = []

    def train_chunks(self, specs, fidelity=FULL, timed=True):
        self.trained += [(tuple(s) if not isinstance(s, str) else s, fidelity) for s in specs]
        return super().train_chunks(specs, fidelity, timed)


def test_evaluator_trains_once_rejects_before_training_and_scores_at_a_fidelity(tiny_suite: str) -> None:
    suite = load_suite(tiny_suite)
    ev = _Counting(suite)
    ev.score_references(ev.reference_names())
    good = LossExpression.parse("(y_pred - y_real)**2")
    same = LossExpression.parse("(y_real - y_pred)**2")
    bad = LossExpression.parse("y_real**2")  # no y_pred: rejected, never trained
    counts, results = ev.evaluate([good, same, bad])
    assert counts == {"evaluated": 1, "cache_hits": 1, "rejected": 1, "failed": 0}
    assert results[0].fitness == pytest.approx(1.0)  # the reference itself
    assert [s for s, _ in ev.trained].count(tuple(good.tokens)) == 1
    assert not any(s == tuple(bad.tokens) for s, _ in ev.trained)
    short = Fidelity((suite.seeds[0],), 0.5)
    counts, [screen] = ev.evaluate([LossExpression.parse("sqrt((y_pred - y_real)**2)")], short)
    assert counts["evaluated"] == 1 and ev.trained[-1][1] == short
    assert 0 < screen.fitness  # normalised against the reference trained at the same fidelity


def test_score_does_not_train_a_rejected_loss(tiny_suite: str) -> None:
    rows = api.score(["y_real**2"], tiny_suite, jobs=1)
    assert rows[0].status == "rejected" and rows[0].fitness == 0.0 and "y_pred" in rows[0].reason


def test_a_callback_sees_every_generation_and_can_stop_the_search(tmp_path: Path, tiny_suite: str) -> None:
    seen = []

    def stop_after_one(stats, hall_of_fame):
        seen.append((stats.gen, len(hall_of_fame), hall_of_fame[0].fitness if hall_of_fame else None))
        return stats.gen >= 1

    run = tmp_path / "cb.db"
    lossforge.search(run=run, suite=tiny_suite, population=4, generations=3, jobs=1, executor="serial",
                     validate_top=0, quiet=True, callbacks=[stop_after_one])
    assert [g for g, _, _ in seen] == [0, 1]
    assert all(n >= 1 and best is not None for _, n, best in seen)
    with RunStore.open(run, readonly=True) as store:
        assert store.summary().status.value == "stopped" and store.last_generation().gen == 1
    lossforge.resume(run, quiet=True)
    with RunStore.open(run, readonly=True) as store:
        assert store.summary().status.value == "finished" and store.last_generation().gen == 3


# ----------------------------------------------------------------------------------- a search that searches
from lossforge.engine import Search  # noqa: E402

SMALL = dict(population=8, generations=3, jobs=1, executor="serial", validate_top=0, chunk_size=8)


def _recording(engine: Search) -> list:
    trained: list = []
    inner = engine.evaluator.train

    def train(specs, fidelity, timed):
        trained.extend((tuple(s) if not isinstance(s, str) else s, fidelity) for s in specs)
        return inner(specs, fidelity, timed)

    engine.evaluator.train = train
    return trained


def test_no_clone_reaches_training_and_offspring_are_new_losses(tmp_path: Path, tiny_suite: str) -> None:
    engine = Search.create(tmp_path / "n.db", SearchConfig(suite=tiny_suite, **SMALL))
    trained = _recording(engine)
    try:
        engine.run()
        gens = engine.store.generations()
        candidates = engine.store.candidates()
    finally:
        engine.close()
    losses = [t for t in trained if not isinstance(t[0], str)]
    assert len(losses) == len(set(losses))  # never the same loss twice at one fidelity
    keys = [c.key for c in candidates]
    assert len(keys) == len(set(keys))
    children = SMALL["population"] - SearchConfig().elite
    for g in gens[1:]:
        assert g.stats["screened"] >= 0.9 * children or g.stats["exhausted"] > 0, g.stats
        assert g.stats["redrawn"] >= 0 and g.stats["structures"] >= 1
    assert gens[-1].stats["spent"] > 0


def test_random_variation_is_a_search_of_fresh_trees(tmp_path: Path, tiny_suite: str) -> None:
    hof = lossforge.search(run=tmp_path / "r.db", suite=tiny_suite, variation="random", quiet=True, **SMALL)
    assert hof and all(r.fitness is not None for r in hof)
    with RunStore.open(tmp_path / "r.db", readonly=True) as store:
        assert store.config()["search"]["variation"] == "random"
        assert all(g.stats["screened"] >= 1 for g in store.generations())


def test_budget_derives_generations_explicit_values_win_and_nonsense_is_refused(tiny_suite: str) -> None:
    suite = load_suite(tiny_suite)
    small, large = SearchConfig(budget=20).resolved(suite), SearchConfig(budget=200).resolved(suite)
    assert small.population == large.population == 40 and 1 <= small.generations < large.generations
    assert SearchConfig(budget=200, generations=2, population=6).resolved(suite).generations == 2
    assert SearchConfig(time_s=60).resolved(suite).generations > 1000  # bounded by the time
    for bad in (dict(budget=0), dict(budget=float("nan")), dict(time_s=-1), dict(screening=0), dict(promote=2)):
        with pytest.raises(lossforge.ConfigError):
            SearchConfig(**bad)
    # elites fill every slot: no child, and a generation that costs nothing (the budget once divided by it)
    with pytest.raises(lossforge.ConfigError, match=r"population \(2\) must be larger than elite \(2\)"):
        SearchConfig(population=2)
    assert SearchConfig(population=2, elite=1).resolved(suite).generations >= 1
    assert SearchConfig(population=2, selection="nsga2").resolved(suite).generations >= 1  # no elites there


def test_a_suite_names_its_default_budget_outside_its_hash(tmp_path: Path, tiny_suite: str) -> None:
    text = Path(tiny_suite).read_text()
    plain, budgeted = tmp_path / "plain.toml", tmp_path / "budgeted.toml"
    plain.write_text(text)
    budgeted.write_text("budget = 20\n" + text)
    a, b = load_suite(plain), load_suite(budgeted)
    assert a.budget is None and b.budget == 20.0
    assert a.hash == b.hash  # the budget changes how long a search runs, not what a loss scores
    assert SearchConfig().resolved(b).generations == SearchConfig(budget=20).resolved(a).generations
    assert SearchConfig().resolved(b).generations < SearchConfig().resolved(a).generations  # engine default 400
    assert SearchConfig(budget=200).resolved(b).generations == SearchConfig(budget=200).resolved(a).generations
    assert load_suite("robust").budget is not None
    for bad in ("0", "-5", '"lots"', "true"):
        budgeted.write_text(f"budget = {bad}\n" + text)
        with pytest.raises(lossforge.ConfigError, match="'budget' must be a positive number"):
            load_suite(budgeted)


@pytest.mark.parametrize("args, fragment", [(["--budget", "0"], "positive"), (["--budget", "lots"], "not a number"),
                                            (["--time", "10x"], "duration"), (["--time", "0m"], "positive")])
def test_cli_refuses_a_bad_budget_with_one_line(args, fragment, capsys) -> None:
    from lossforge.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["search", *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and fragment in err and len(err.strip().splitlines()) == 1


def test_budget_stops_the_search_and_the_run_says_what_it_spent(tmp_path: Path, tiny_suite: str) -> None:
    import io

    out = io.StringIO()
    lossforge.search(run=tmp_path / "b.db", suite=tiny_suite, budget=4, population=8, generations=50, jobs=1,
                     executor="serial", validate_top=0, stream=out)
    with RunStore.open(tmp_path / "b.db", readonly=True) as store:
        gens = store.generations()
    assert len(gens) < 50 and gens[-2].stats["spent"] < 4  # stopped by the budget, not the generations
    text = out.getvalue()
    assert "budget 4 full evaluations" in text and "spent " in text


def test_resume_mid_rung_gives_the_uninterrupted_result(tmp_path: Path, tiny_suite: str) -> None:
    config = SearchConfig(suite=tiny_suite, **SMALL)
    whole = Search.create(tmp_path / "whole.db", config)
    whole.run()
    expected = [(c.generation, c.key, c.fitness) for c in whole.store.candidates()]
    expected_rungs = [(r["key"], r["fitness"]) for r in whole.store.screenings()]
    whole.close()

    cut = Search.create(tmp_path / "cut.db", config)
    inner = cut.evaluator.train

    def interrupt_at_promotion(specs, fidelity, timed):
        if cut._gen == 2 and fidelity.is_full and timed:  # gen 2 screened and recorded, nothing promoted yet
            raise KeyboardInterrupt
        return inner(specs, fidelity, timed)

    cut.evaluator.train = interrupt_at_promotion
    with pytest.raises(KeyboardInterrupt):
        cut.run()
    assert any(r["generation"] == 2 for r in cut.store.screenings()) and cut.store.last_generation().gen == 1
    cut.close()
    resumed = Search.resume(tmp_path / "cut.db")
    resumed.run()
    got = [(c.generation, c.key, c.fitness) for c in resumed.store.candidates()]
    got_rungs = [(r["key"], r["fitness"]) for r in resumed.store.screenings()]
    resumed.close()
    assert got == expected and got_rungs == expected_rungs
