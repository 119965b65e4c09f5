"""The progress display: phases (baselines, generations, validation, tuning), rate and ETA, on a terminal
(rich bars) and off it (plain lines)."""

from __future__ import annotations

import io

import pytest

from lossforge.progress import GenerationStats, make_progress


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _stats(gen: int) -> GenerationStats:
    return GenerationStats(gen=gen, evaluated=4, cache_hits=0, rejected=1, failed=0, best=1.2 + gen, median=0.5,
                           best_formula="abs(y_pred - y_real)", seconds=10.0)


def test_plain_lines_name_each_phase_and_each_generation() -> None:
    stream, clock = io.StringIO(), _Clock()
    progress = make_progress(2, 4, stream=stream, clock=clock)
    progress.phase("baselines", 3)
    for _ in range(3):
        clock.now += 1.0
        progress.candidate_scored()
    for gen in range(2):
        progress.generation_started(gen)
        for _ in range(4):
            clock.now += 2.5
            progress.candidate_scored()
        progress.generation_finished(_stats(gen))
    progress.phase("validation", 2)
    clock.now += 4.0
    progress.candidate_scored(2)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "baselines: 3 loss(es) ..." and lines[1] == "baselines: 3 scored in 3s"
    # the rate counts only the generations' losses from the first generation's start (baselines are set-up)
    assert lines[2].startswith("gen   0") and lines[2].endswith("| 0.40 losses/s  ETA 10s")
    assert lines[3].startswith("gen   1") and lines[3].endswith("| 0.40 losses/s  ETA 0s")
    assert lines[4:] == ["validation: 2 loss(es) ...", "validation: 2 scored in 4s"]


def test_no_rate_and_no_eta_before_the_first_loss_finishes() -> None:
    stream, clock = io.StringIO(), _Clock()
    progress = make_progress(3, 8, stream=stream, clock=clock)
    progress.candidate_scored(5)  # baselines, unannounced: not search throughput
    progress.generation_started(0)
    clock.now += 0.001
    assert progress.rate() is None and progress.eta() is None  # type: ignore[attr-defined]
    assert "- losses/s" in progress.rate_text()  # type: ignore[attr-defined]
    clock.now += 2.0
    progress.candidate_scored(2)
    assert progress.rate() == pytest.approx(2 / 2.001)  # type: ignore[attr-defined]
    # 2 of 8 losses in 2 s: a generation takes ~8 s; three generations less the 2 s spent
    assert progress.eta() == pytest.approx(8.004 * 3 - 2.001)  # type: ignore[attr-defined]
    assert stream.getvalue() == "baselines: ...\nbaselines: 5 scored in 0s\n"  # an engine that announces no phase


def test_rich_bars_follow_the_phases() -> None:
    pytest.importorskip("rich")
    stream, clock = _Terminal(), _Clock()
    progress = make_progress(3, 4, stream=stream, clock=clock)
    bars = progress.bars  # type: ignore[attr-defined]

    def step() -> tuple[str, float | None, float]:
        task = next(t for t in bars.tasks if t.id == progress.step_bar)  # type: ignore[attr-defined]
        return task.description, task.total, task.completed

    progress.phase("baselines", 3)
    progress.candidate_scored()
    assert step() == ("baselines", 3, 1)
    progress.generation_started(0)
    clock.now += 1.0
    assert "- losses/s" in bars.tasks[progress.gens_bar].fields["info"]  # type: ignore[attr-defined]
    progress.candidate_scored(3)
    assert step() == ("generation 0 of 2", 4, 3)
    progress.generation_finished(_stats(0))
    progress.generation_started(1)
    assert step() == ("generation 1 of 2", 4, 0)
    assert bars.tasks[progress.gens_bar].completed == 1  # type: ignore[attr-defined]
    progress.generation_finished(_stats(1))
    progress.phase("tuning")
    progress.candidate_scored()
    assert step() == ("tuning", None, 1)
    progress.close()
    out = stream.getvalue()
    assert "baselines: 1 scored" in out and "gen   0  trained   4" in out and "gen   1  trained   4" in out


def test_the_per_generation_count_never_passes_its_bound() -> None:
    # racing trains a loss twice (screening, then in full): more trainings than the expected count must
    # raise the bound, never show "6/4"
    stream, clock = io.StringIO(), _Clock()
    progress = make_progress(2, 4, stream=stream, clock=clock)
    progress.generation_started(0)
    for _ in range(6):
        clock.now += 1.0
        progress.candidate_scored()
    assert "trained 6/6" in progress.status()
    progress.close()
