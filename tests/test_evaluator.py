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
from lossforge.storage import RunStore


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
