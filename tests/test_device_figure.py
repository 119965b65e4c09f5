"""scripts/device_figure.py: the losses-per-second figure of a search on a device, read from its run file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import lossforge
from tests.conftest import load_script


@pytest.fixture(scope="module")
def device_figure():
    return load_script("device_figure")


def test_the_figure_counts_the_run_files_losses_per_second(device_figure, tiny_suite, tmp_path, device,
                                                            capsys) -> None:
    out = tmp_path / "fig"
    args = ["--device", device, "--suite", tiny_suite, "--population", "6", "--generations", "2",
            "--chunk-size", "4", "--out", str(out)]
    assert device_figure.main(args) == 0
    run = out / f"device-{device.split(':')[0]}-seed0.db"
    counts, elapsed = lossforge.open_run(run).counts(), lossforge.open_run(run).elapsed_s
    fig = json.loads((out / "device_figure.json").read_text())["device"]
    assert (fig["screened"], fig["trained"]) == (counts["screened"], counts["trained"])
    assert counts["trained"] > 0 and counts["screened"] >= counts["trained"]
    assert fig["screened_per_s"] == pytest.approx(counts["screened"] / elapsed)
    assert fig["trained_per_s"] == pytest.approx(counts["trained"] / elapsed)
    assert (fig["device"], fig["chunk_size"], fig["population"]) == (device, 4, 6)
    # a second call reads the finished run again (no resume: its elapsed time stays) and compares it with
    # itself: ratio 1
    capsys.readouterr()
    assert device_figure.main(args + ["--compare", str(run)]) == 0
    assert "ratio: 1.00x screened/s, 1.00x full/s" in capsys.readouterr().out
    assert lossforge.open_run(run).counts() == counts and lossforge.open_run(run).elapsed_s == elapsed


def test_a_missing_run_to_compare_is_one_line_before_any_search(device_figure, tiny_suite, tmp_path,
                                                                 capsys) -> None:
    out = tmp_path / "fig"
    code = device_figure.main(["--device", "cpu", "--suite", tiny_suite, "--out", str(out),
                               "--compare", str(tmp_path / "nope.db")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "no run at" in err
    assert not out.exists()
