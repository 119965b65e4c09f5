"""Hostile and clumsy JSON exports: each gets one clear line (CLI exit 2, ExportError from the API), never a
traceback or a hang, and the file is never changed. Reads are bounded by the bytes actually read (not
``st_size``) and refuse anything but a regular file before reading. A hypothesis campaign mutates a valid
export (fields, types, sizes, nesting, bytes) and runs it through ``lossforge score`` and ``lossforge.load``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lossforge
import lossforge.scoring
from lossforge.cli import main
from lossforge.errors import ExportError, LossforgeError
from lossforge.export import render
from lossforge.expression import LossExpression
from lossforge.loss import SymbolicLoss

EXAMPLES = int(os.environ.get("LOSSFORGE_FUZZ_EXAMPLES", "150"))
VALID = json.loads(render(LossExpression.parse("sqrt(y_pred - y_real) + 0.5*log(y_pred)"), "json",
                          {"run": "runs/x.db", "rank": 1, "fitness": 1.25}))


def _score(capsys: pytest.CaptureFixture, path: Path) -> tuple[int, str]:
    code = main(["score", str(path)])
    return code, capsys.readouterr().err


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _export(tmp_path: Path, name: str, doc: object) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return path


def test_score_of_a_missing_json_file_says_it_is_missing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, err = _score(capsys, tmp_path / "missing.json")
    assert code == 2 and "no such file" in _one_line(err) and "missing.json" in err


@pytest.mark.parametrize("case, fragment", [
    ("huge_integer", "digits"),
    ("no_tokens", "no \"tokens\""),
    ("tokens_not_a_list", "list of prefix tokens"),
    ("directory", "a directory"),
    ("dev_zero", "a device"),
    ("invalid_utf8", "not UTF-8"),
    ("version_object", "version"),
    ("big_file", "limit"),
])
def test_hostile_exports_get_one_line(tmp_path: Path, capsys: pytest.CaptureFixture, case: str,
                                      fragment: str) -> None:
    path = tmp_path / "x.json"
    if case == "huge_integer":
        path.write_text('{"format": "lossforge-loss", "version": 1, "tokens": ["plus", "y_pred", '
                        + "9" * 5000 + "]}")
    elif case == "no_tokens":
        _export(tmp_path, "x.json", {k: v for k, v in VALID.items() if k != "tokens"})
    elif case == "tokens_not_a_list":
        _export(tmp_path, "x.json", {**VALID, "tokens": 5})
    elif case == "directory":
        path.mkdir()
    elif case == "dev_zero":
        path.symlink_to("/dev/zero")
    elif case == "invalid_utf8":
        path.write_bytes(json.dumps(VALID).encode()[:-2] + b'"\xff\xfe"]}')
    elif case == "version_object":
        _export(tmp_path, "x.json", {**VALID, "version": {"a": [1] * 100}})
    else:
        path.write_bytes(b" " * 3_000_000)
    before = path.read_bytes() if path.is_file() and case != "dev_zero" else None
    code, err = _score(capsys, path)
    assert code == 2 and fragment in _one_line(err), err
    with pytest.raises(ExportError, match=fragment):
        lossforge.load(path)
    if before is not None:
        assert path.read_bytes() == before


def test_a_fifo_named_json_does_not_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "x.json"
    os.mkfifo(fifo)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-m", "lossforge.cli", "score", str(fifo)], capture_output=True,
                          text=True, timeout=120, env=env)
    assert proc.returncode == 2 and "a FIFO" in _one_line(proc.stderr)
    with pytest.raises(ExportError, match="FIFO"):
        lossforge.load(fifo)


# ----------------------------------------------------------------------------------------- fuzzing
#: Stands for a 5,000-digit integer (json.dumps refuses to write one; it is spliced into the text).
HUGE_INT = "<huge integer>"


def _deep(depth: int) -> object:
    value: object = 1.0
    for _ in range(depth):
        value = [value]
    return value


hostile_values = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=50), st.sampled_from(["__import__('os').system('touch PWNED')", "y_pred", "divide",
                                           "plus", "\x00", "\uffff"]),
    st.lists(st.one_of(st.sampled_from(["plus", "y_pred", "y_real", "exp", "divide", "sqrt"]),
                       st.floats(allow_nan=True), st.integers()), max_size=40),
    st.integers(min_value=1, max_value=5000).map(lambda d: _deep(d)),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    st.just(10 ** 40), st.just(HUGE_INT),
)


@st.composite
def mutated_exports(draw: st.DrawFn) -> bytes:
    """A valid export with fields replaced, removed or added, then maybe corrupted at the byte level."""
    doc = dict(VALID)
    for _ in range(draw(st.integers(0, 3))):
        action = draw(st.sampled_from(["replace", "delete", "add", "token"]))
        key = draw(st.sampled_from(["tokens", "tokens", "version", *sorted(doc)]))
        if action == "replace":
            doc[key] = draw(hostile_values)
        elif action == "delete":
            doc.pop(key, None)
        elif action == "add":
            doc[draw(st.text(max_size=10))] = draw(hostile_values)
        elif isinstance(doc.get("tokens"), list) and doc["tokens"]:
            tokens = list(doc["tokens"])
            tokens[draw(st.integers(0, len(tokens) - 1))] = draw(hostile_values)
            doc["tokens"] = tokens
    try:
        data = json.dumps(doc, allow_nan=True).encode().replace(json.dumps(HUGE_INT).encode(), b"9" * 5000)
    except (ValueError, RecursionError):
        data = b"[" * 100_000
    mode = draw(st.sampled_from(["as_is", "truncate", "insert", "flip"]))
    if mode != "as_is" and data:
        at = draw(st.integers(0, len(data) - 1))
        if mode == "truncate":
            data = data[:at]
        elif mode == "insert":
            data = data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at:]
        else:
            data = data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1:]
    return data


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=mutated_exports())
def test_fuzzed_exports_through_cli_and_load(tmp_path: Path, capsys: pytest.CaptureFixture, data: bytes) -> None:
    path = tmp_path / "fuzzed.json"
    path.write_bytes(data)

    def accepted(*args: object, **kwargs: object) -> None:  # stop `score` before any training
        raise LossforgeError("stub: the export was accepted")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lossforge.scoring, "load_suite", accepted)
        code = main(["score", str(path)])
    err = capsys.readouterr().err
    assert code == 2
    line = _one_line(err)
    try:
        loss = lossforge.load(path)
    except ExportError as exc:
        assert "\n" not in str(exc) and str(exc) in line
    else:
        assert isinstance(loss, SymbolicLoss) and "accepted" in line
    assert path.read_bytes() == data
