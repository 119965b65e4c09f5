"""Odd settings of the search itself: spaces that can express only a handful of losses, and the like."""

from __future__ import annotations

import io
from pathlib import Path

import lossforge
from lossforge.expression import LossExpression
from lossforge.rejection import rejection_reason
from lossforge.runfile import RunStore
from lossforge.scoring import load_suite
from lossforge.space import load_space

#: Depth-1 trees of one operator that must use both variables: y_pred - y_real and y_real - y_pred, both
#: rejected (a linear loss has no minimum), so no slot of any generation can hold a new viable loss.
HANDFUL = """
name = "handful"
operators = ["minus"]
[terminals]
variables = ["y_pred", "y_real"]
constants = { low = 1.0, high = 2.0, digits = 0 }
[limits]
init_min_depth = 1
init_max_depth = 1
max_depth = 2
max_nodes = 3
[constraints]
require_variables = ["y_pred", "y_real"]
"""


def _space(tmp_path: Path, text: str, name: str = "space.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_generation_zero_reports_the_slots_it_could_not_fill_with_new_viable_losses(tmp_path: Path,
                                                                                  tiny_suite: str) -> None:
    space = _space(tmp_path, HANDFUL)
    out = io.StringIO()
    lossforge.search(run=tmp_path / "r.db", suite=tiny_suite, space=space, population=4, generations=1,
                     executor="serial", seed_baselines=False, stream=out)
    suite, sp = load_suite(tiny_suite), load_space(space)
    with RunStore.open(tmp_path / "r.db", readonly=True) as store:
        gen0 = store.generations()[0]
    exprs = [LossExpression(m["tree"]) for m in gen0.population]
    viable = {e.key for e in exprs if sp.violation(e.tokens) is None
              and rejection_reason(e, suite.problems, suite.probe_classes) is None}
    assert gen0.stats["exhausted"] == len(exprs) - len(viable) > 0
    line0 = next(line for line in out.getvalue().splitlines() if line.startswith("gen   0"))
    assert f"space exhausted: {gen0.stats['exhausted']} slot(s)" in line0


def test_a_space_with_room_fills_generation_zero_without_exhaustion(tmp_path: Path, tiny_suite: str) -> None:
    lossforge.search(run=tmp_path / "r.db", suite=tiny_suite, population=6, generations=1, executor="serial",
                     quiet=True)
    with RunStore.open(tmp_path / "r.db", readonly=True) as store:
        assert store.generations()[0].stats["exhausted"] == 0


def test_a_time_limited_search_never_shows_an_eta_past_its_limit(tmp_path: Path, tiny_suite: str) -> None:
    # --time alone allows 100000 generations: the ETA of that many was hours for a search of seconds
    out = io.StringIO()
    lossforge.search(run=tmp_path / "r.db", suite=tiny_suite, population=4, time_s=30.0, executor="serial",
                     validate_top=0, callbacks=[lambda stats, hof: stats.gen == 2], stream=out)
    etas = [line.rsplit("ETA ", 1)[1] for line in out.getvalue().splitlines() if line.startswith("gen ")]
    assert len(etas) == 3
    assert all(eta == "?" or (eta[:-1].isdigit() and eta.endswith("s") and int(eta[:-1]) <= 30) for eta in etas), etas


def test_scale_twins_on_a_suite_that_is_not_scale_free_says_it_does_nothing(tmp_path: Path) -> None:
    import pytest

    from lossforge.engine import Search, SearchConfig

    suite = tmp_path / "sgd.toml"
    suite.write_text('name = "sgd"\nseeds = [0]\n[[tasks]]\nname = "digits_sgd"\ntype = "label_noise"\n'
                     'preset = "symmetric40"\nsettings = { n_train = 100, epochs = 1, hidden = [8], '
                     'optimizer = "sgd" }\n')
    with pytest.warns(UserWarning, match="scale_twins has no effect .*digits_sgd"):
        search = Search.create(tmp_path / "r.db", SearchConfig(suite=str(suite), population=4, generations=1,
                                                               executor="serial", scale_twins=True))
    assert not search.evaluator.scale_twins  # and indeed it is off
    search.close()


NO_CONSTANTS = """
name = "bare"
operators = ["plus", "minus", "multiply", "divide", "sqrt", "log", "exp"]
[terminals]
variables = ["y_pred", "y_real"]
constants = false
[limits]
init_min_depth = 1
init_max_depth = 3
max_depth = 5
max_nodes = 25
[constraints]
require_variables = ["y_pred", "y_real"]
"""


def test_a_space_without_constants_searches_only_constant_free_losses(tmp_path: Path, tiny_suite: str) -> None:
    # there was no way to write one: the constants table was required and low < high
    space = _space(tmp_path, NO_CONSTANTS)
    sp = load_space(space)
    assert not sp.constants and sp.violation(["multiply", 2.0, "minus", "y_pred", "y_real"]) is not None
    run = tmp_path / "r.db"
    lossforge.search(run=run, suite=tiny_suite, space=space, population=8, generations=3, executor="serial",
                     quiet=True, validate_top=0, callbacks=[lambda stats, hof: stats.gen == 1])
    lossforge.resume(run, quiet=True)
    with RunStore.open(run, readonly=True) as store:
        trees = [c.tree for c in store.candidates()] + [m["tree"] for g in store.generations() for m in g.population]
        assert len(store.generations()) == 4 and store.best(1)
    assert trees and not any(isinstance(t, float) for tree in trees for t in tree)


def test_the_start_line_estimates_the_spend_the_generations_were_derived_from(tmp_path: Path) -> None:
    # the default search derives 27 generations from its 400 full evaluations, then said "about 425": it
    # counted generation 0 as a full evaluation of every member, not screened like the rest
    import re

    from lossforge.engine import DEFAULT_BUDGET, Search, SearchConfig

    search = Search.create(tmp_path / "r.db", SearchConfig(suite="regression", executor="serial"))
    try:
        config, seeds = search.config, len(search.suite.seeds)
        expected = float(re.search(r"about (\d+) full evaluations", search.budget_line()).group(1))
        assert abs(expected - DEFAULT_BUDGET) <= config.generation_cost(config.population, seeds)
    finally:
        search.close()


class _ClosedAfter(io.StringIO):
    """A stream whose reader goes away after ``lines`` lines, as `lossforge search | head -3` does."""

    def __init__(self, lines: int) -> None:
        super().__init__()
        self.left = lines

    def write(self, text: str) -> int:
        if self.left <= 0:
            raise BrokenPipeError(32, "Broken pipe")
        self.left -= text.count("\n")
        return super().write(text)


def test_a_closed_output_leaves_the_run_interrupted_and_resumable(tmp_path: Path, tiny_suite: str) -> None:
    """Before, a search whose output was closed (piped into head) was marked failed, while the CLI exited 0
    for it; now it is interrupted, as by Ctrl-C, and resume finishes it."""
    import pytest

    from lossforge.runfile import RunStatus

    run = tmp_path / "r.db"
    with pytest.raises(BrokenPipeError):
        lossforge.search(run=run, suite=tiny_suite, population=4, generations=3, executor="serial",
                         validate_top=0, stream=_ClosedAfter(4))
    with RunStore.open(run, readonly=True) as store:
        assert store.summary().status is RunStatus.INTERRUPTED
        done = len(store.generations())
    assert done < 4
    lossforge.resume(run, quiet=True)
    with RunStore.open(run, readonly=True) as store:
        assert store.summary().status is RunStatus.FINISHED and len(store.generations()) == 4
