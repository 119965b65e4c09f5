"""scripts/mutate.py stays in step with the code: every mutant's snippet is found exactly once in its file,
and a stale mutant is refused with one line instead of being run (it would measure nothing)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "mutate.py"


def _load():
    spec = importlib.util.spec_from_file_location("lossforge_mutate_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def test_every_mutant_snippet_is_found_exactly_once() -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "every snippet found exactly once" in proc.stdout


def test_a_stale_mutant_is_refused_with_one_line(capsys, monkeypatch) -> None:
    mutate = _load()
    stale = replace(mutate.MUTANTS[0], edits=(("this text is in no lossforge module", "x"),))
    monkeypatch.setattr(mutate, "MUTANTS", [stale, *mutate.MUTANTS[1:]])
    assert mutate.main(["--only", "0"]) == 2  # refused before any copy or test run
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "mutant 0" in err[0] and "found 0 times" in err[0]
    assert mutate.main(["--check"]) == 1
    assert "mutant 0" in capsys.readouterr().err


def test_a_mutant_that_does_not_parse_is_refused() -> None:
    mutate = _load()
    broken = replace(mutate.MUTANTS[0], edits=((mutate.MUTANTS[0].edits[0][0], "torch.where(b < 0, -eps"),))
    assert "does not parse" in mutate.check(broken)
