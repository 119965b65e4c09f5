"""Hostile run files, generated: hypothesis mutates a valid run file (any table, any column: wrong types,
huge or deep values, code strings, deleted rows) and every command that reads run files must answer with
exit 0 or one clear line and exit 2, never a traceback, and leave a refused file byte-identical.

Bounded for CI (``max_examples`` small); ``LOSSFORGE_FUZZ=large`` runs many more by hand.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lossforge
from lossforge.cli import main
from lossforge.errors import LossforgeError

settings.register_profile("ci", max_examples=30, deadline=None, derandomize=True, database=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("large", max_examples=600, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
PROFILE = "large" if os.environ.get("LOSSFORGE_FUZZ") == "large" else "ci"

CODE = ["__import__('os').system('touch PWNED')", '"""\nimport os; os.system("touch PWNED")\nr"""',
        "'; DROP TABLE candidates; --", "${HOME}", "\x00\xff", "{{7*7}}"]
DEEP = "[" * 100_000 + "]" * 100_000
JSONISH = ['"suite"', '[]', '{}', '1', 'null', 'true', '"x"', '{"t": "x"}', '{"t": {"score": "x"}}',
           '{"t": {"normalized": "high"}}', '[["add"]]', '["nope", 1]', '{"suite": "regression"}',
           '[{"tree": ["y_pred"], "fitness": "x"}]', '[{"tree": "y_pred"}]', '{"seeds": "all"}',
           '{"search": {"population": 1e300}}', '{"search": "x", "space": {}, "suite": {}}', "Infinity", "-Infinity",
           '{"a": ' * 40 + "1" + "}" * 40, "1" * 5000, '[1e999]']
VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-2**63, max_value=2**63 - 1), st.floats(allow_nan=False),
    st.text(max_size=40), st.sampled_from(CODE), st.sampled_from(JSONISH), st.just(DEEP),
    st.binary(max_size=64), st.just("x" * 2_000_000),
)


@pytest.fixture(scope="module")
def valid_run(tmp_path_factory) -> Path:
    """A finished run of the tiny suite: every table has rows."""
    directory = tmp_path_factory.mktemp("fuzz-base")
    path = directory / "base.db"
    lossforge.search(run=path, suite=str(Path(__file__).parent / "data" / "tiny_suite.toml"), population=4,
                     generations=1, jobs=1, executor="serial", quiet=True, validate_top=1)
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO lease VALUES (1, 'elsewhere', 1, 'x', 'old', 0, 0)")  # a stale lease row too
    conn.commit()
    conn.close()
    return path


def _columns(path: Path) -> list[tuple[str, str]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    out = [(t, c[1]) for t in tables for c in conn.execute(f"PRAGMA table_info({t})")]
    conn.close()
    return out


@st.composite
def mutations(draw, columns: list[tuple[str, str]]):
    edits = []
    for _ in range(draw(st.integers(1, 3))):
        table, column = draw(st.sampled_from(columns))
        if draw(st.integers(0, 5)) == 0:
            edits.append(("delete", table, None, draw(st.integers(0, 3))))
        else:
            edits.append(("set", table, column, draw(VALUES)))
    return edits


def _apply(path: Path, edits) -> bool:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA ignore_check_constraints = ON")
    changed = False
    for kind, table, column, value in edits:
        try:
            if kind == "delete":
                cursor = conn.execute(f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} "
                                      f"LIMIT 1 OFFSET ?)", (value,))
            else:
                cursor = conn.execute(f"UPDATE {table} SET {column} = ? WHERE rowid = (SELECT MIN(rowid) "
                                      f"FROM {table})", (value,))
            changed |= cursor.rowcount > 0
        except (sqlite3.IntegrityError, OverflowError):
            continue  # NOT NULL / UNIQUE: SQLite itself refuses this edit
    conn.commit()
    conn.close()
    return changed


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def _check(code: int, err: str, what: str) -> None:
    assert code in (0, 2), (what, code, err)
    if code == 2:
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, (what, err)


def test_hostile_run_files_get_one_line_never_a_traceback(valid_run, tmp_path_factory):
    columns = _columns(valid_run)
    stats = {"cases": 0, "refused": 0}

    @settings(settings.get_profile(PROFILE))
    @given(edits=mutations(columns))
    def case(edits):
        directory = Path(tempfile.mkdtemp(dir=tmp_path_factory.getbasetemp()))
        path = directory / "run.db"
        shutil.copy(valid_run, path)
        _apply(path, edits)
        before = path.read_bytes()
        stats["cases"] += 1
        commands = [["show", str(path)], ["export", str(path), "--format", "json"],
                    ["--runs-dir", str(directory), "runs"]]
        if PROFILE == "large":  # plots take seconds: the report joins the larger profile only
            commands.append(["report", str(path), "-o", str(directory.with_name(directory.name + "-report"))])
        for argv in commands:
            code, _, err = _cli(*argv)
            _check(code, err, (argv[0], edits))
            stats["refused"] += code == 2
            assert path.read_bytes() == before, ("a read-only command changed the file", argv, edits)
            assert sorted(p.name for p in directory.iterdir()) == ["run.db"], ("journal files left", argv)
        try:
            lossforge.load(path)
        except LossforgeError as exc:
            assert "\n" not in str(exc).strip(), edits
        assert path.read_bytes() == before
        code, _, err = _cli("resume", str(path), "--quiet")
        _check(code, err, ("resume", edits))
        if code == 2:
            stats["refused"] += 1
            assert path.read_bytes() == before, ("a refused resume changed the file", edits, err)
        shutil.rmtree(directory)

    case()
    print(f"fuzzed {stats['cases']} hostile run files, {stats['refused']} refusals")
    assert stats["cases"] >= 10


# The hand-edited files a hostile-input campaign reported, each through every command that reads runs.
NAMED = {
    "config.suite a string": "UPDATE config SET document = json_set(document, '$.suite', 'regression')",
    "text fitness": "UPDATE results SET fitness = 'high' WHERE kind = 'loss' AND status = 'complete'",
    "wrongly shaped validation": "UPDATE results SET task_scores = '{\"outliers\": [1, 2]}' WHERE kind = 'validation'",
    "100,000-deep JSON": "UPDATE generations SET stats = '" + DEEP + "'",
    "code string tree": "UPDATE candidates SET tree = '\"__import__(''os'').system(''touch PWNED'')\"'",
    "generation stats of the wrong shape": "UPDATE generations SET stats = '{\"gen\": \"x\", \"best\": []}'",
}


@pytest.mark.parametrize("sql", NAMED.values(), ids=NAMED.keys())
def test_named_hostile_edits_give_one_line_from_every_command(valid_run, tmp_path, sql):
    path = tmp_path / "run.db"
    shutil.copy(valid_run, path)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA ignore_check_constraints = ON")
    assert conn.execute(sql).rowcount > 0
    conn.commit()
    conn.close()
    before = path.read_bytes()
    refused = 0
    for argv in (["show", str(path)], ["export", str(path), "--format", "py"], ["--runs-dir", str(tmp_path), "runs"],
                 ["report", str(path), "-o", str(tmp_path / "report")], ["resume", str(path), "--quiet"]):
        code, _, err = _cli(*argv)
        _check(code, err, argv[0])
        refused += code == 2
        if argv[0] != "resume" or code == 2:
            assert path.read_bytes() == before, argv
    with pytest.raises(LossforgeError):
        lossforge.load(path) if "stats" not in sql else (_ for _ in ()).throw(LossforgeError("stats unread"))
    assert refused >= 1
    assert not (tmp_path / "PWNED").exists() and not Path("PWNED").exists()
