"""Each known loss computes its published formula."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lossforge.baselines import BASELINES, baselines_for, get_baseline
from lossforge.errors import ConfigError

GEN = torch.Generator().manual_seed(0)
LOGITS = torch.randn(12, 5, generator=GEN, dtype=torch.float64) * 2
LABELS = torch.randint(0, 5, (12,), generator=GEN)
P = torch.softmax(LOGITS, 1)
P_Y = P.gather(1, LABELS[:, None]).squeeze(1)


def _cls(name: str) -> torch.Tensor:
    return get_baseline(name).make("classification")(LOGITS, LABELS)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("cross_entropy", F.cross_entropy(LOGITS, LABELS, reduction="none")),
        ("gce", (1 - P_Y**0.7) / 0.7),
        ("sce", 0.1 * F.cross_entropy(LOGITS, LABELS, reduction="none") + 4 * (1 - P_Y)),
        ("mae", 2 * (1 - P_Y)),
        ("mse", ((P - F.one_hot(LABELS, 5)) ** 2).sum(1)),
        ("taylor_ce", (1 - P_Y) + (1 - P_Y) ** 2 / 2),
        ("poly1", F.cross_entropy(LOGITS, LABELS, reduction="none") + (1 - P_Y)),
        ("focal", -((1 - P_Y) ** 2) * torch.log(P_Y)),
        ("label_smoothing", F.cross_entropy(LOGITS, LABELS, reduction="none", label_smoothing=0.1)),
        ("bootstrap_soft", -((0.95 * F.one_hot(LABELS, 5) + 0.05 * P) * torch.log(P)).sum(1)),
        ("baikal", (F.one_hot(LABELS, 5) / P).sum(1) - torch.log(P).sum(1)),
    ],
)
def test_classification_baselines_match_their_formulas(name: str, expected: torch.Tensor) -> None:
    torch.testing.assert_close(_cls(name), expected, rtol=1e-5, atol=1e-5)


def test_nce_rce() -> None:
    log_p = torch.log_softmax(LOGITS, 1)
    nce = -log_p.gather(1, LABELS[:, None]).squeeze(1) / -log_p.sum(1)
    rce = 4 * (1 - P_Y)
    torch.testing.assert_close(_cls("nce_rce"), nce + rce)


def test_regression_baselines() -> None:
    x, y = torch.randn(20, generator=GEN, dtype=torch.float64) * 3, torch.randn(20, generator=GEN, dtype=torch.float64)
    torch.testing.assert_close(get_baseline("mse").make("regression")(x, y), (x - y) ** 2)
    torch.testing.assert_close(get_baseline("mae").make("regression")(x, y), (x - y).abs(), atol=1e-6, rtol=0)
    torch.testing.assert_close(get_baseline("huber").make("regression")(x, y), F.huber_loss(x, y, reduction="none"))


def test_every_baseline_cites_a_source_and_the_registry_is_filtered_by_problem() -> None:
    assert all(b.source for b in BASELINES.values())
    assert "huber" in {b.name for b in baselines_for("regression")}
    assert "cross_entropy" not in {b.name for b in baselines_for("regression")}
    with pytest.raises(ConfigError, match="unknown baseline"):
        get_baseline("hinge")
