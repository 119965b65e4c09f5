"""End-to-end search, determinism, run files, export/load and the CLI (tiny suite, seeded)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import sympy

from lossforge.backends.sympy_plain import plain_sympy
import torch

import lossforge
from lossforge.export import load, render
from lossforge.expression import LossExpression
from lossforge.runfile import RunStore
from tests.conftest import wait_for_generation

SMALL = dict(population=6, generations=2, chunk_size=4)


def _run(tmp: Path, name: str, tiny_suite: str, **kw) -> list:
    settings = {**SMALL, "suite": tiny_suite, **kw}
    return lossforge.search(run=tmp / f"{name}.db", **settings)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.conftest import TINY_SUITE

    tmp = tmp_path_factory.mktemp("runs")
    _run(tmp, "base", TINY_SUITE, jobs=1, executor="serial")
    return tmp / "base.db"


def test_search_records_everything(finished_run: Path) -> None:
    with RunStore.open(finished_run, readonly=True) as store:
        gens = store.generations()
        assert [g.gen for g in gens] == [0, 1, 2]
        assert all(len(g.population) == SMALL["population"] for g in gens)
        cands = store.candidates()
        assert cands and len({c.key for c in cands}) == len(cands)  # a loss is never trained twice
        assert {"mse", "huber"} <= set(store.baselines())
        best = store.best(3)
        assert best and all(b.fitness is not None and b.formula for b in best)
        assert store.summary().status.value == "finished"
        for c in cands:
            assert c.status.value in ("complete", "rejected", "failed")
            if c.status.value != "complete":
                assert c.reason


def test_same_seed_same_run_whatever_jobs(finished_run: Path, tmp_path: Path, tiny_suite: str) -> None:
    _run(tmp_path, "parallel", tiny_suite, jobs=2, executor="joblib")
    with RunStore.open(finished_run, readonly=True) as a, RunStore.open(tmp_path / "parallel.db", readonly=True) as b:
        assert [g.population for g in a.generations()] == [g.population for g in b.generations()]
        assert [(r.key, r.fitness) for r in a.best(5)] == [(r.key, r.fitness) for r in b.best(5)]


def test_other_seed_other_run(finished_run: Path, tmp_path: Path, tiny_suite: str) -> None:
    _run(tmp_path, "seed1", tiny_suite, jobs=1, executor="serial", seed=1)
    with RunStore.open(finished_run, readonly=True) as a, RunStore.open(tmp_path / "seed1.db", readonly=True) as b:
        assert a.generations()[0].population != b.generations()[0].population


def test_kill_9_mid_search_then_resume_gives_the_uninterrupted_result(tmp_path: Path, tiny_suite: str) -> None:
    import os
    import signal

    # generations after the first take ~0.1 s here: with only a few left, the search could end between the
    # wait below and the kill
    generations = 40
    args = ["--suite", tiny_suite, "--population", "6", "--generations", str(generations), "--jobs", "1",
            "--chunk-size", "2"]
    proc = subprocess.Popen([sys.executable, "-m", "lossforge.cli", "--runs-dir", str(tmp_path), "search",
                             "--run", "killed", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    killed = tmp_path / "killed.db"
    wait_for_generation(proc, killed, 1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with RunStore.open(killed, readonly=True) as store:
        scored_before = {c.key for c in store.candidates()}
        assert store.last_generation().gen < generations
    code, _, err = _cli("resume", "killed", runs_dir=tmp_path)
    assert code == 0, err
    code, _, err = _cli("search", "--run", "whole", *args, runs_dir=tmp_path)
    assert code == 0, err
    with RunStore.open(killed, readonly=True) as a, RunStore.open(tmp_path / "whole.db", readonly=True) as b:
        assert scored_before <= {c.key for c in a.candidates()}  # nothing scored before the kill was lost
        assert [g.population for g in a.generations()] == [g.population for g in b.generations()]
        assert [(r.key, r.fitness) for r in a.best(10)] == [(r.key, r.fitness) for r in b.best(10)]


def test_export_formats_and_load_agree(finished_run: Path, tmp_path: Path) -> None:
    expr = lossforge.export.expression_from_run(finished_run, 1)
    json_path = tmp_path / "best.json"
    json_path.write_text(render(expr, "json", {"run": "test"}))
    py_path = tmp_path / "best_loss.py"
    py_path.write_text(render(expr, "py", {"run": "test"}, name="BestLoss"))
    from_json = load(json_path, reduction="none")
    from_run = load(finished_run, rank=1, reduction="none")
    search_time = lossforge.SymbolicLoss(expr, reduction="none")
    sys.path.insert(0, str(tmp_path))
    try:
        import best_loss  # the exported module: needs only torch
    finally:
        sys.path.remove(str(tmp_path))
    exported = best_loss.BestLoss(reduction="none")
    gen = torch.Generator().manual_seed(3)
    x = (torch.randn(50, generator=gen, dtype=torch.float64) * 3)
    y = torch.randn(50, generator=gen, dtype=torch.float64) * 3
    outs, grads = [], []
    for module in (search_time, from_json, from_run, exported):
        xi = x.clone().requires_grad_(True)
        v = module(xi, y)
        v.sum().backward()
        outs.append(v.detach())
        grads.append(xi.grad)
    for o, g in zip(outs[1:], grads[1:]):
        torch.testing.assert_close(o, outs[0])
        torch.testing.assert_close(g, grads[0])
    latex = render(expr, "latex")
    assert latex == expr.latex() + "\n" and "y_{pred}" in latex and "y_{real}" in latex
    # plain sympy (sign/Max/Abs for the protected operators) that evaluates to what the search scored
    assert render(expr, "sympy") == sympy.srepr(plain_sympy(expr.sympy)) + "\n"
    assert "Symbol('y_pred'" in render(expr, "sympy") and "Symbol('y_real'" in render(expr, "sympy")


def _cli(*args: str, runs_dir: Path) -> tuple[int, str, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "lossforge.cli", "--runs-dir", str(runs_dir), *args],
        capture_output=True, text=True, timeout=600,
    )
    return proc.returncode, proc.stdout, proc.stderr


def test_cli_show_export_runs(finished_run: Path, tmp_path: Path) -> None:
    code, out, err = _cli("show", str(finished_run), runs_dir=tmp_path)
    assert code == 0, err
    assert "rank" in out and "formula" in out and "mse" in out
    code, out, _ = _cli("export", str(finished_run), "--format", "json", runs_dir=tmp_path)
    assert code == 0 and json.loads(out)["format"] == "lossforge-loss"
    code, out, _ = _cli("runs", runs_dir=finished_run.parent)
    assert code == 0 and "base" in out and "finished" in out
    code, out, _ = _cli("space", runs_dir=tmp_path)
    assert code == 0 and "divide" in out and "protected" in out


def test_cli_search_and_score(tmp_path: Path, tiny_suite: str) -> None:
    code, out, err = _cli("search", "--suite", tiny_suite, "--population", "4", "--generations", "1",
                          "--jobs", "1", "--run", "cli", runs_dir=tmp_path)
    assert code == 0, err
    assert "gen   1" in out and "run saved to" in out and (tmp_path / "cli.db").exists()
    code, out, err = _cli("score", "(y_pred - y_real)**2", "--suite", tiny_suite, runs_dir=tmp_path)
    assert code == 0, err
    assert "huber" in out and "loss 1" in out


def test_expression_tokens_roundtrip_through_run_file(finished_run: Path) -> None:
    with RunStore.open(finished_run, readonly=True) as store:
        for c in store.candidates():
            assert LossExpression(c.tree).key == c.key
