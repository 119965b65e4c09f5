"""A found loss exported, plugged into a trainer and read as data: what a user checks after a search.
Hand-edited run contents go in through SQLite, as a tool or an editor would."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from lossforge.cli import main


def _strict_json(text: str):
    def refuse(constant: str):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def _edited(tiny_run: Path, tmp_path: Path, *statements: str) -> Path:
    path = tmp_path / "edited.db"
    shutil.copy(tiny_run, path)
    with sqlite3.connect(path) as conn:
        for sql in statements:
            conn.execute(sql)
    return path


@pytest.mark.parametrize("statement", [
    "UPDATE run_state SET elapsed_s = 9e999",
    """UPDATE candidates SET tree = '["multiply", NaN, "minus", "y_pred", "y_real"]'""",
])
def test_show_json_is_strict_json_whatever_the_run_holds(tiny_run: Path, tmp_path: Path, capsys,
                                                         statement: str) -> None:
    """Before: an infinite elapsed time or a NaN constant in a stored tree reached `show --json` as
    `Infinity`/`NaN`, which is not JSON (jq and strict parsers refuse the whole document); the dashboard's
    copy of the same document already wrote null there, as docs/dashboard.md promises."""
    path = _edited(tiny_run, tmp_path, statement)
    assert main(["show", str(path), "--json"]) == 0
    doc = _strict_json(capsys.readouterr().out)
    assert doc["hall_of_fame"] and doc["status"] == "finished"


def _one_line(err: str, fragment: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in err, err


@pytest.mark.parametrize("name", ["run", "missing.db", "loss.tex", "loss.sympy"])
def test_score_of_a_run_file_or_another_export_names_the_json_export(tiny_run: Path, tmp_path: Path, capsys,
                                                                     tiny_suite: str, name: str) -> None:
    """Before: `score runs/x.db` (to score a run's best loss elsewhere) and `score` of the LaTeX or sympy
    export read the file name as expression text: "unsupported syntax (Attribute) at column 1", which names
    neither the file nor what to give instead (a `.py` export already got that line)."""
    if name == "run":
        path = tiny_run
    else:
        path = tmp_path / name
        if name != "missing.db":
            assert main(["export", str(tiny_run), "--format", name.split(".")[1].replace("tex", "latex"),
                         "-o", str(path)]) == 0
            capsys.readouterr()
    assert main(["score", str(path), "--suite", tiny_suite, "--baselines", ""]) == 2
    _one_line(capsys.readouterr().err, "--format json")


@pytest.mark.parametrize("name", ["", "  "])
def test_an_empty_class_name_is_refused_not_replaced_by_the_default(tiny_run: Path, tmp_path: Path, capsys,
                                                                    name: str) -> None:
    """Before: `export --format py --name ''` (a script's unset variable) wrote class EvolvedLoss_<key>, and
    `--name '  '` class Loss, so the trainer's `from my_loss import RobustLoss` failed later; the other
    options refuse an empty value in one line."""
    out = tmp_path / "my_loss.py"
    assert main(["export", str(tiny_run), "--format", "py", "--name", name, "-o", str(out)]) == 2
    _one_line(capsys.readouterr().err, "--name names no class name")
    assert not out.exists()


def test_load_of_a_py_export_says_to_import_it_or_load_the_json(tmp_path: Path) -> None:
    """Before, lossforge.load("my_loss.py") said "not a JSON loss export (invalid JSON at line 1 ...)",
    which named neither what the file is nor what load takes; nothing in the file may run either way."""
    from lossforge.errors import ExportError
    from lossforge.export import load

    path = tmp_path / "my_loss.py"
    marker = tmp_path / "ran"
    path.write_text(f"open({str(marker)!r}, 'w').close()\n")
    with pytest.raises(ExportError, match=r"my_loss\.py: a \.py export is imported.*from my_loss import.*\.json "
                                          "export or the run file"):
        load(path)
    assert not marker.exists()


@pytest.mark.parametrize("fmt", ["json", "latex", "sympy"])
def test_a_class_name_for_a_format_without_a_class_is_refused(tiny_run: Path, tmp_path: Path, capsys,
                                                              fmt: str) -> None:
    """Before: `export --format json --name MyLoss` wrote the export and dropped the name without a word,
    so a user who meant the py export got a file their `from my_loss import MyLoss` cannot use."""
    out = tmp_path / f"loss.{fmt}"
    assert main(["export", str(tiny_run), "--format", fmt, "--name", "MyLoss", "-o", str(out)]) == 2
    _one_line(capsys.readouterr().err, "only for the py export")
    assert not out.exists()
    assert main(["export", str(tiny_run), "--format", fmt, "-o", str(out)]) == 0 and out.exists()


@pytest.mark.parametrize("name, fragment", [("robust_loss", None), ("match", None), ("a-b", "use e.g. 'a_b'"),
                                            ("9lives", "use e.g. 'Loss_9lives'"), ("class", "a Python keyword"),
                                            ("torch", "a name the exported module defines")])
def test_the_class_name_is_the_name_given_or_refused(tiny_run: Path, tmp_path: Path, capsys, name: str,
                                                     fragment: str | None) -> None:
    """Before: `--name robust_loss` wrote class Robust_loss and `--name a-b` class A_b, so the user's
    `from my_loss import robust_loss` failed after a successful export; a name that cannot be a class
    was rewritten without a word."""
    import importlib.util

    out = tmp_path / "my_loss.py"
    code = main(["export", str(tiny_run), "--format", "py", "--name", name, "-o", str(out)])
    if fragment is not None:
        assert code == 2 and not out.exists()
        _one_line(capsys.readouterr().err, fragment)
        return
    assert code == 0
    spec = importlib.util.spec_from_file_location("my_loss", out)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert callable(getattr(module, name))


@pytest.mark.parametrize("name", [3, b"Loss", ["Loss"]])
def test_a_class_name_that_is_no_string_is_a_typed_error(name) -> None:
    from lossforge.errors import ExportError
    from lossforge.export import to_python
    from lossforge.expression import LossExpression

    with pytest.raises(ExportError, match="class name must be a string"):
        to_python(LossExpression.parse("(y_pred - y_real)**2"), name=name)
