"""The TensorBoard callback: the event files it writes, read back with protobuf."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

pytest.importorskip("tensorboardX")

from tensorboardX.proto.event_pb2 import Event  # noqa: E402

from lossforge.progress import GenerationStats  # noqa: E402
from lossforge.tensorboard import TensorBoardCallback  # noqa: E402


def _events(logdir: Path) -> list[Event]:
    """Every Event record of the logdir's event files (TFRecord framing: length, crc, data, crc)."""
    out = []
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack_from("<Q", data, pos)
            pos += 12
            out.append(Event.FromString(data[pos:pos + length]))
            pos += length + 4
    return out


def _stats(gen: int, best: float, median: float, evaluated: int, seconds: float) -> GenerationStats:
    return GenerationStats(gen=gen, evaluated=evaluated, cache_hits=2, rejected=3, failed=0, best=best,
                           median=median, best_formula="abs(y_pred - y_real)", seconds=seconds)


def test_scalars_and_formulas_per_generation(tmp_path: Path) -> None:
    callback = TensorBoardCallback(tmp_path / "tb", top=2)
    hof = [{"formula": "abs(y_pred - y_real)", "fitness": 1.25}, {"formula": "(y_pred - y_real)**2", "fitness": 1.0},
           {"formula": "never shown", "fitness": 0.5}]
    assert callback(_stats(0, 1.25, 0.5, 8, 4.0), hof) is None  # never asks to stop
    assert callback(_stats(1, 1.5, 0.75, 6, 2.0), hof[:1]) is None
    callback.close()
    scalars: dict[str, dict[int, float]] = {}
    texts: dict[int, str] = {}
    for event in _events(tmp_path / "tb"):
        for value in event.summary.value:
            if value.HasField("simple_value"):
                scalars.setdefault(value.tag, {})[event.step] = value.simple_value
            elif value.metadata.plugin_data.plugin_name == "text":
                texts[event.step] = value.tensor.string_val[0].decode()
    assert scalars["fitness/best"] == {0: 1.25, 1: 1.5}
    assert scalars["fitness/median"] == {0: 0.5, 1: 0.75}
    assert scalars["candidates/trained"] == {0: 8, 1: 6} and scalars["candidates/screened"] == {0: 8, 1: 6}
    assert scalars["candidates/rejected"] == {0: 3, 1: 3}
    assert scalars["speed/losses_per_s"] == {0: 2.0, 1: 3.0}
    assert "abs(y_pred - y_real)" in texts[0] and "(y_pred - y_real)**2" in texts[0] and "never shown" not in texts[0]
    assert "1.2500" in texts[1] and "(y_pred - y_real)**2" not in texts[1]


def test_reads_back_with_tensorboard_when_installed(tmp_path: Path) -> None:
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    callback = TensorBoardCallback(tmp_path / "tb")
    callback(_stats(0, 1.1, 0.9, 4, 1.0), [])
    callback.close()
    acc = accumulator.EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert [s.value for s in acc.Scalars("fitness/best")] == [pytest.approx(1.1)]


def test_search_tensorboard_option_writes_one_step_per_generation(tmp_path: Path, tiny_suite: str) -> None:
    from lossforge.cli import main

    logdir = tmp_path / "tb"
    code = main(["--runs-dir", str(tmp_path), "search", "--suite", tiny_suite, "--population", "6",
                 "--generations", "1", "--jobs", "1", "--validate-top", "0", "--quiet", "--run", "tb",
                 "--tensorboard", str(logdir)])
    assert code == 0
    steps = {event.step for event in _events(logdir) for value in event.summary.value
             if value.tag == "fitness/best"}
    assert steps == {0, 1}


def test_a_bad_top_or_logdir_is_refused_with_one_line(tmp_path: Path) -> None:
    from lossforge.errors import ConfigError

    for top in (0, -1, "5", True):
        with pytest.raises(ConfigError, match="top must be a positive whole number"):
            TensorBoardCallback(tmp_path / "tb", top=top)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="cannot create TensorBoard directory"):
        TensorBoardCallback(tmp_path / "file")
    assert (tmp_path / "file").read_text() == "x"
