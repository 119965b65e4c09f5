"""The early-rejection probe at its thresholds: the descent margin, exploding gradients, fingerprint digits."""

from __future__ import annotations

from lossforge.expression import LossExpression
from lossforge.rejection import probe, rejection_reason

REG = {"regression"}


def test_a_loss_that_barely_moves_predictions_is_rejected() -> None:
    # its gradient underflows Adam's epsilon except within about 0.4 of the target: minimising it moves
    # the probe predictions 2 % of the way (less than the required 5 %); a flatter version moves them 9 %
    assert rejection_reason(LossExpression.parse("-exp(-100*(y_pred - y_real)**2)"), REG) == (
        "minimising it does not move predictions towards the targets")
    assert rejection_reason(LossExpression.parse("-exp(-30*(y_pred - y_real)**2)"), REG) is None


def test_an_exploding_probe_gradient_is_rejected() -> None:
    # constants within the ±1e6 limit whose gradient still explodes (1e6 * 1e3 would fold past the limit)
    reason = rejection_reason(LossExpression.parse("1000000.0*(1000.0*y_pred - y_real)**2"), REG)
    assert reason is not None and reason.startswith("exploding gradient on probe inputs (norm ")
    assert rejection_reason(LossExpression.parse("1000.0*(y_pred - y_real)**2"), REG) is None


def test_fingerprints_tell_apart_gradients_that_differ_in_the_fifth_digit() -> None:
    fp = lambda text: probe(LossExpression.parse(text), REG).fingerprint  # noqa: E731
    assert fp("(y_pred - y_real)**2") != fp("1.0001*(y_pred - y_real)**2")
