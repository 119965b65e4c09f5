"""Command-line papercuts: an expression starting with "-" is a value, not an option (no "--" needed)."""

from __future__ import annotations

import pytest

from lossforge.cli import build_parser, main


@pytest.mark.parametrize("expression", ["-y_real*log(y_pred)", "-y_real", "-(y_pred - y_real)**2", "-1.5*y_pred"])
def test_an_expression_starting_with_minus_is_a_value(expression: str) -> None:
    args = build_parser().parse_args(["score", expression, "--seeds", "2"])
    assert args.expression == expression and args.seeds == 2
    assert build_parser().parse_args(["diagnose", expression]).target == expression


def test_options_still_parse_and_unknown_ones_still_fail(capsys: pytest.CaptureFixture) -> None:
    assert build_parser().parse_args(["export", "r", "--format", "py", "-o", "x.py"]).output == "x.py"
    assert build_parser().parse_args(["export", "r", "--format", "py", "-ox.py"]).output == "x.py"
    assert build_parser().parse_args(["search", "--seed", "-3", "--jobs", "-1"]).seed == -3
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["score", "y_pred", "--no-such-option"])
    assert info.value.code == 2 and "--no-such-option" in capsys.readouterr().err


def test_diagnose_runs_on_cross_entropy_written_with_a_leading_minus(capsys: pytest.CaptureFixture) -> None:
    assert main(["diagnose", "-y_real*log(y_pred)", "--problem", "classification"]) == 0
    out = capsys.readouterr().out
    assert "-y_real*log(y_pred)" in out.replace(" ", "") or "log(y_pred)" in out
