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




def _with_candidate(tiny_run: Path, tmp_path: Path, tree: list, **fields) -> tuple[Path, int]:
    """A copy of the run with one more complete candidate; its rank in the final ranking."""
    path = tmp_path / "edited.db"
    shutil.copy(tiny_run, path)
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
def test_a_json_export_is_strict_json_whatever_the_run_holds(tiny_run: Path, tmp_path: Path, capsys,
                                                             fitness: float) -> None:
    # Before: a run whose loss had an infinite fitness exported "fitness": Infinity, which is not JSON
    # (jq, JavaScript and strict parsers refuse the file); `show --json` already wrote null
    path, rank = _with_candidate(tiny_run, tmp_path, ["multiply", 2.0, "minus", "y_pred", "y_real"],
                                 fitness=fitness)
    assert main(["export", str(path), "--rank", str(rank), "--format", "json"]) == 0
    doc = _strict_json(capsys.readouterr().out)
    assert doc["metadata"]["fitness"] is None and doc["metadata"]["rank"] == rank
    assert doc["tokens"] == ["multiply", 2.0, "minus", "y_pred", "y_real"]
    out = tmp_path / "loss.json"
    assert main(["export", str(path), "--rank", str(rank), "--format", "json", "-o", str(out)]) == 0
    loaded = lossforge.load(out, reduction="sum")
    assert loaded(torch.tensor([3.0]), torch.tensor([1.0])).item() == 4.0


def test_load_refuses_a_rank_or_pick_a_json_export_cannot_honour(tiny_run: Path, tmp_path: Path) -> None:
    # Before: load("best.json", rank=2) returned the file's one loss, silently not the rank asked for
    out = tmp_path / "second.json"
    assert main(["export", str(tiny_run), "--rank", "2", "--format", "json", "-o", str(out)]) == 0
    assert lossforge.load(out).expression == lossforge.load(tiny_run, rank=2).expression
    assert lossforge.load(out, rank=1, pick="best").expression == lossforge.load(out).expression
    for options in ({"rank": 2}, {"pick": "knee"}):
        with pytest.raises(lossforge.errors.ExportError, match="holds one loss") as info:
            lossforge.load(out, **options)
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("path", [None, 3, ["runs/x.db"]])
def test_load_of_something_that_is_no_path_is_a_typed_error(path) -> None:
    # Before: a TypeError traceback from pathlib ("expected str, bytes or os.PathLike object")
    with pytest.raises(lossforge.errors.ExportError, match="path"):
        lossforge.load(path)


def test_a_run_loss_takes_the_torch_options_as_load_does(tiny_run: Path) -> None:
    # Before: run.loss(1).torch(weight=...) was a TypeError; only load() passed the options through
    loss = lossforge.open_run(tiny_run).loss(1)
    made = loss.torch(reduction="sum", problem="classification", weight=torch.tensor([1.0, 3.0]),
                      ignore_index=1, label_smoothing=0.2, trainable_constants=True)
    loaded = lossforge.load(tiny_run, rank=1, reduction="sum", problem="classification",
                            weight=torch.tensor([1.0, 3.0]), ignore_index=1, label_smoothing=0.2,
                            trainable_constants=True)
    logits, target = torch.tensor([[0.5, -1.0], [2.0, 0.1], [0.0, 0.0]]), torch.tensor([0, 1, 1])
    assert made.expression == loaded.expression
    assert torch.equal(made(logits, target), loaded(logits, target))
    assert isinstance(made.constants, torch.nn.Parameter) or made.constants.numel() == 0


def test_tables_of_a_run_without_scored_losses_keep_their_columns(tiny_run: Path, tmp_path: Path) -> None:
    # Before: hall_of_fame() of a run with no scored loss (or n=0) was a DataFrame without columns, so
    # df["fitness"] raised KeyError where an empty column was expected
    pytest.importorskip("pandas")
    run = lossforge.open_run(tiny_run)
    full = run.hall_of_fame()
    empty = run.hall_of_fame(0)
    assert len(empty) == 0 and list(empty.columns) == list(full.columns)
    assert list(run.hall_of_fame(0, as_frame=False)) == []


def test_a_run_loss_as_sympy_is_plain_sympy_that_sympy_can_evaluate(tiny_run: Path, tmp_path: Path) -> None:
    # Before: Loss.sympy() held lossforge's own protected functions: it printed as sqrt(...) but
    # sympy.lambdify raised NameError ('ProtectedSqrt' is not defined); now it is the sympy export's form
    import sympy

    from lossforge.export import render

    path, rank = _with_candidate(tiny_run, tmp_path, ["plus", "divide", 0.7, "minus", "y_pred", "y_real",
                                                      "log", "sqrt", "multiply", "y_pred", "exp", "y_real"],
                                 fitness=1.0)
    loss = lossforge.open_run(path).loss(rank)
    expr = loss.sympy()
    assert sympy.srepr(expr) + "\n" == render(loss.expression(), "sympy")
    symbols = {s.name: s for s in expr.free_symbols}
    f = sympy.lambdify((symbols["y_pred"], symbols["y_real"]), expr, "math")
    module = loss.torch(reduction="none", problem="regression")
    for p, r in [(0.3, 1.0), (2.0, 2.0), (0.0, -1.5), (-3.0, 40.0)]:
        expected = module(torch.tensor([p], dtype=torch.float64), torch.tensor([r], dtype=torch.float64)).item()
        assert f(p, r) == pytest.approx(expected, rel=1e-12), (p, r)


def test_a_tree_nested_too_deeply_is_one_line_not_a_recursion_error(tiny_run: Path, tmp_path: Path, capsys) -> None:
    # Before: 200 nested sin (201 tokens, under the 512-node limit) passed validation, then printing the
    # formula for the export raised RecursionError (a traceback from `lossforge export`, `load` of a JSON)
    from lossforge.expression import MAX_DEPTH

    deep = ["sin"] * 200 + ["y_pred"]
    path, rank = _with_candidate(tiny_run, tmp_path, deep, fitness=1.0, formula="sin(sin(...))")
    for fmt in ("py", "json"):
        assert main(["export", str(path), "--rank", str(rank), "--format", fmt]) == 2
        err = capsys.readouterr().err
        assert "nested" in err and str(MAX_DEPTH) in err and len(err.strip().splitlines()) == 1, err
    export = tmp_path / "deep.json"
    export.write_text(json.dumps({"format": "lossforge-loss", "version": 1, "tokens": deep}))
    with pytest.raises(lossforge.errors.ExportError, match="nested"):
        lossforge.load(export)
    # the deepest tree allowed exports in every format (a search's trees are at most 17 deep)
    from lossforge.export import FORMATS, render
    from lossforge.expression import LossExpression

    for fmt in FORMATS:
        assert render(LossExpression(["sin"] * (MAX_DEPTH - 1) + ["y_pred"]), fmt)


def test_one_invalid_hand_edited_row_does_not_hide_the_others(tiny_run: Path, tmp_path: Path) -> None:
    # Before: a row whose tokens fail validation (a constant of 1e300) made hall_of_fame() and to_dict() raise,
    # so the valid losses of the run could not be listed; the bad row itself still cannot be built
    path, rank = _with_candidate(tiny_run, tmp_path, ["multiply", 1e300, "minus", "y_pred", "y_real"],
                                 fitness=5.0)
    run = lossforge.open_run(path)
    rows = run.hall_of_fame(None, as_frame=False)
    assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1)) and len(rows) >= 2
    assert rows[rank - 1]["same_as"] is None
    doc = _strict_json(json.dumps(run.to_dict(), allow_nan=False))
    assert len(doc["hall_of_fame"]) == len(rows)
    with pytest.raises(lossforge.errors.ExpressionError, match="1e\\+300"):
        run.loss(rank).torch()
    other = next(r["rank"] for r in rows if r["rank"] != rank)
    assert isinstance(run.loss(other).torch(), torch.nn.Module)
