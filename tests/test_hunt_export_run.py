"""What a user does with a found loss after a search: export it from the run file, load it, open the run.
Hand-written (hostile) run contents go in through :mod:`lossforge.runfile`, as a tool or an editor would."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

import lossforge
from lossforge.cli import main
from lossforge.runfile import RunStore
from tests.conftest import TINY_SUITE


@pytest.fixture(scope="module")
def run_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny search (its ranking has validated losses first)."""
    path = tmp_path_factory.mktemp("runs") / "found.db"
    lossforge.search(run=path, suite=TINY_SUITE, population=4, generations=1, jobs=1, executor="serial",
                     quiet=True)
    return path


def _with_candidate(run_file: Path, tmp_path: Path, tree: list, **fields) -> tuple[Path, int]:
    """A copy of the run with one more complete candidate; its rank in the final ranking."""
    path = tmp_path / "edited.db"
    shutil.copy(run_file, path)
    with RunStore.open(path) as store:
        store.record_candidate(1, tree, status="complete", key=fields.pop("key", "edited"),
                               complexity=3, **fields)
    ranked = lossforge.open_run(path).losses()
    return path, next(loss.rank for loss in ranked if loss.key == "edited")


def _strict_json(text: str):
    def refuse(constant: str):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("fitness", [math.inf, -math.inf])
def test_a_json_export_is_strict_json_whatever_the_run_holds(run_file: Path, tmp_path: Path, capsys,
                                                             fitness: float) -> None:
    # Before: a run whose loss had an infinite fitness exported "fitness": Infinity, which is not JSON
    # (jq, JavaScript and strict parsers refuse the file); `show --json` already wrote null
    path, rank = _with_candidate(run_file, tmp_path, ["multiply", 2.0, "minus", "y_pred", "y_real"],
                                 fitness=fitness)
    assert main(["export", str(path), "--rank", str(rank), "--format", "json"]) == 0
    doc = _strict_json(capsys.readouterr().out)
    assert doc["metadata"]["fitness"] is None and doc["metadata"]["rank"] == rank
    assert doc["tokens"] == ["multiply", 2.0, "minus", "y_pred", "y_real"]
    out = tmp_path / "loss.json"
    assert main(["export", str(path), "--rank", str(rank), "--format", "json", "-o", str(out)]) == 0
    loaded = lossforge.load(out, reduction="sum")
    assert loaded(torch.tensor([3.0]), torch.tensor([1.0])).item() == 4.0
