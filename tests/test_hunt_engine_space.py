"""Search-space files a user may get wrong, and what the space promises about the trees drawn from it."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from lossforge import gp
from lossforge.errors import SpaceError
from lossforge.space import load_space

BODY = """operators = ["plus", "multiply"]
[terminals]
variables = ["y_pred", "y_real"]
constants = {{ low = {low}, high = {high}, digits = {digits} }}
[limits]
init_min_depth = 1
init_max_depth = 3
max_depth = 4
max_nodes = 15
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.toml"
    path.write_text(text)
    return path


def _constants_drawn(space, n: int = 300) -> list[float]:
    toolbox, _ = gp.toolbox_for(space)
    random.seed(0)
    values = []
    for _ in range(n):
        values += [t for t in gp.to_tokens(toolbox.individual()) if isinstance(t, float)]
        mutant, = toolbox.mutate(toolbox.individual())
        values += [t for t in gp.to_tokens(mutant) if isinstance(t, float)]
    return values


# each range's ends are not multiples of its digits, so plain rounding leaves it (0.3 .. 2.4 gives 0)
@pytest.mark.parametrize("low, high, digits", [(0.12, 0.9, 1), (-0.26, 0.74, 1), (0.3, 2.4, 0)])
def test_every_constant_drawn_lies_in_the_stated_range(tmp_path: Path, low: float, high: float,
                                                       digits: int) -> None:
    space = load_space(_write(tmp_path, BODY.format(low=low, high=high, digits=digits)))
    values = _constants_drawn(space)
    assert values and all(low <= v <= high for v in values), sorted(set(v for v in values if not low <= v <= high))
    assert all(round(v, digits) == v for v in values)


def test_a_range_with_no_value_at_its_digits_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SpaceError, match=r"no constant with 0 decimal\(s\) lies in \[0.1, 0.4\]"):
        load_space(_write(tmp_path, BODY.format(low=0.1, high=0.4, digits=0)))


@pytest.mark.parametrize("line, field", [("name = 3", "name"), ('name = ["a"]', "name"),
                                         ("description = { a = 1 }", "description")])
def test_a_name_or_description_that_is_not_text_is_refused(tmp_path: Path, line: str, field: str) -> None:
    # they were turned into text silently ("['a']"), and the name is what messages and run files show
    with pytest.raises(SpaceError, match=f"field '{field}' must be str"):
        load_space(_write(tmp_path, line + "\n" + BODY.format(low=-1.0, high=1.0, digits=2)))


@pytest.mark.parametrize("variables, missing", [('["y_pred"]', "y_real"), ('["y_real"]', "y_pred")])
def test_a_space_without_both_variables_is_refused(tmp_path: Path, variables: str, missing: str) -> None:
    # early rejection refuses every loss that does not use both: such a space ran a whole search for nothing
    text = BODY.format(low=-1.0, high=1.0, digits=2).replace('["y_pred", "y_real"]', variables)
    with pytest.raises(SpaceError, match=f"terminals.variables: .*{missing}"):
        load_space(_write(tmp_path, text))


def test_a_space_of_unary_operators_alone_is_refused(tmp_path: Path) -> None:
    # a tree of unary operators has one leaf, so it never uses both variables and is always rejected
    text = BODY.format(low=-1.0, high=1.0, digits=2).replace('["plus", "multiply"]', '["exp", "log"]')
    with pytest.raises(SpaceError, match="operators: .*two arguments"):
        load_space(_write(tmp_path, text))


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory) -> Path:
    import lossforge
    from tests.conftest import TINY_SUITE

    path = tmp_path_factory.mktemp("hunt-space") / "stopped.db"
    lossforge.search(run=path, suite=TINY_SUITE, population=4, generations=3, executor="serial", quiet=True,
                     validate_top=0, callbacks=[lambda stats, hof: stats.gen == 1])
    return path


@pytest.mark.parametrize("field, value, message", [
    ("max_depth", 5.5, "limits.max_depth must be an integer"),
    ("init_max_depth", 2.5, "limits.init_max_depth must be an integer"),
    ("init_min_depth", True, "limits.init_min_depth must be an integer"),
    ("const_digits", 2.5, "terminals.constants.digits must be an integer"),
    ("const_low", "a", "terminals.constants.low must be a number"),
    ("name", 3, "name must be text"),
    ("operators", ["plus", "plus", "minus", "multiply", "divide", "sqrt", "log", "exp", "sin", "cos"],
     "operators lists a name twice"),
])
def test_a_stored_space_is_checked_as_a_space_file_is(stopped_run: Path, tmp_path: Path, field: str,
                                                      value: object, message: str) -> None:
    # resume promises the same bounds and errors as a new search; the stored space skipped the file's types
    import json
    import shutil
    import sqlite3

    import lossforge
    from lossforge.errors import RunError

    path = tmp_path / "run.db"
    shutil.copy(stopped_run, path)
    conn = sqlite3.connect(path)
    doc = json.loads(conn.execute("SELECT document FROM config").fetchone()[0])
    doc["space"][field] = value
    conn.execute("UPDATE config SET document = ?", (json.dumps(doc),))
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(RunError, match=message):
        lossforge.resume(path, quiet=True)
    assert path.read_bytes() == before


def test_initial_depths_that_grow_trees_past_the_expression_limit_are_refused(tmp_path: Path) -> None:
    # init_max_depth 9 of binary operators grows trees of up to 1023 nodes: generation 0 failed with
    # "expression: 8191 nodes exceed the limit of 512" after the baselines had been scored
    text = BODY.format(low=-1.0, high=1.0, digits=2).replace("init_max_depth = 3", "init_max_depth = 9") \
        .replace("max_depth = 4", "max_depth = 9")
    with pytest.raises(SpaceError, match="init_max_depth .* 1023 nodes"):
        load_space(_write(tmp_path, text))
    ok = text.replace("init_max_depth = 9", "init_max_depth = 8")  # at most 511 nodes
    assert load_space(_write(tmp_path, ok)).init_max_depth == 8


@pytest.mark.parametrize("value", ["true", '"none"', "0"])
def test_constants_are_a_table_or_false(tmp_path: Path, value: str) -> None:
    text = BODY.format(low=-1.0, high=1.0, digits=2).replace(
        "constants = { low = -1.0, high = 1.0, digits = 2 }", f"constants = {value}")
    with pytest.raises(SpaceError, match="terminals.constants .*false"):
        load_space(_write(tmp_path, text))


def test_a_space_path_that_is_not_a_small_regular_file_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    # /dev/zero (or a FIFO) as --space read forever; a huge file was read into memory whole
    with pytest.raises(SpaceError, match="not a regular file"):
        load_space("/dev/zero")
    big = tmp_path / "big.toml"
    big.write_text(BODY.format(low=-1.0, high=1.0, digits=2) + "#" * (2 * 2**20) + "\n")
    with pytest.raises(SpaceError, match="larger than 1 MiB"):
        load_space(big)


def test_the_space_command_shows_a_hostile_name_without_obeying_it(tmp_path: Path, capsys) -> None:
    from lossforge.cli import main

    path = _write(tmp_path, 'name = "\\u001b[2J\\u001b]0;owned\\u0007"\ndescription = "a\\nb"\n'
                  + BODY.format(low=-1.0, high=1.0, digits=2))
    assert main(["space", str(path)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\\x1b[2J" in out
    assert out.splitlines()[0].endswith("a\\nb")  # the description stays on the name's line


def test_a_space_whose_trees_are_single_leaves_is_refused(tmp_path: Path) -> None:
    # max_depth 0 allows only a leaf, which never uses both variables: every loss of the search was rejected
    text = BODY.format(low=-1.0, high=1.0, digits=2).replace("init_min_depth = 1", "init_min_depth = 0") \
        .replace("init_max_depth = 3", "init_max_depth = 0").replace("max_depth = 4", "max_depth = 0")
    with pytest.raises(SpaceError, match="max_depth"):
        load_space(_write(tmp_path, text))
