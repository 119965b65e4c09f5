"""A demanding user's look at the views of a run: the dashboard's host check, ``show --format markdown`` and
``report -o``. Hand-written run contents go in through :mod:`lossforge.runfile`, as a tool or an editor would."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from lossforge.cli import main
from lossforge.runfile import RunStore
from tests.conftest import dashboard_server


# --- the dashboard's host check -----------------------------------------------------------------------------


def _status(url: str, host: str) -> int:
    request = urllib.request.Request(url, headers={"Host": host})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.parametrize("host", ["127.0.0.1.evil.example", "127.0.0.1.evil.example:8765", "127.evil.example",
                                  "127.0.0.1.nip.io:8765"])
def test_a_host_name_that_merely_starts_with_127_is_refused_on_loopback(tmp_path: Path, host: str) -> None:
    """Before: any Host starting with "127." was served, so a page on 127.0.0.1.evil.example (a name its
    owner can point at 127.0.0.1: DNS rebinding) read every run the dashboard shows."""
    with dashboard_server(tmp_path) as server:
        url = server.url
        assert _status(url + "api/runs.json", host) == 403


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.1:8765", "127.1.2.3:80", "localhost", "LOCALHOST:8765",
                                  "[::1]:8765"])
def test_loopback_addresses_and_localhost_are_still_served(tmp_path: Path, host: str) -> None:
    with dashboard_server(tmp_path) as server:
        url = server.url
        assert _status(url + "api/runs.json", host) == 200


# --- show --format markdown ---------------------------------------------------------------------------------


@pytest.fixture()
def hostile(tiny_run: Path, tmp_path: Path) -> Path:
    path = tmp_path / "hostile.db"
    shutil.copy(tiny_run, path)
    with RunStore.open(path) as store:  # the best row, with a formula text an editor wrote
        store.record_candidate(1, ["multiply", "y_pred", "y_real"], status="complete", key="edited",
                               formula="y_pred*y_real*[x](https://evil.example)`<b>", complexity=3,
                               fitness=1e6)
    return path


def test_show_markdown_writes_formulas_as_code_spans(hostile: Path, capsys: pytest.CaptureFixture) -> None:
    """Before: formulas went into the Markdown table as plain text, so ``a*b*c`` rendered ``b`` in italics
    (every product of three factors, e.g. ``(y_pred - y_real)*(...)*2``) and a formula text in the run file
    became a link, where report.md (and the README) show formulas literally, as code spans."""
    assert main(["show", str(hostile), "--format", "markdown", "--top", "50"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line for line in lines[2:] if line.startswith("| ")]
    cells = [row.split(" | ")[-1].removesuffix(" |") for row in rows]
    edited = [cell for cell in cells if "evil.example" in cell]
    assert edited == ["``y_pred*y_real*[x](https://evil.example)`<b>``"]  # the longer fence: a ` inside
    assert all(cell.startswith("`") for cell in cells) and len(cells) >= 2


def test_show_markdown_keeps_the_known_loss_note_outside_the_code_span(tiny_run: Path,
                                                                        capsys: pytest.CaptureFixture) -> None:
    assert main(["show", str(tiny_run), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert main(["show", str(tiny_run), "--format", "markdown", "--top", "50"]) == 0
    rows = capsys.readouterr().out.splitlines()[2:]
    for entry, row in zip(doc["hall_of_fame"], rows):
        cell = row.split(" | ")[-1].removesuffix(" |")
        assert cell.startswith(f"`{entry['formula']}`")
        if entry["same_as"]:
            assert cell.endswith(f"(= {entry['same_as']['name']})") or "x " + entry["same_as"]["name"] in cell


# --- report -o ----------------------------------------------------------------------------------------------


def test_report_with_an_empty_output_directory_is_refused(tiny_run: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    """Before: ``report RUN -o ''`` (a script's unset variable) silently wrote the report to the default
    ``RUN-report`` directory beside the run, where the README says empty values are refused."""
    run = tmp_path / "r.db"
    shutil.copy(tiny_run, run)
    assert main(["report", str(run), "-o", ""]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "-o" in err
    assert not (tmp_path / "r-report").exists()
    assert main(["report", str(run), "-o", "  "]) == 2
    capsys.readouterr()


# --- show of a run with no scored loss ----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "markdown"])
def test_show_of_a_run_without_scored_losses_keeps_the_task_columns(tiny_run: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture, fmt: str) -> None:
    """Before: the task columns came from the first hall-of-fame row, so a run that had scored nothing yet
    (just started, or every loss rejected) wrote a CSV header without them: a script that appends the rows
    of several runs, or reads ``row["label_noise"]``, got a different header from the same suite."""
    import csv
    import io
    import sqlite3

    assert main(["show", str(tiny_run), "--json"]) == 0
    tasks = json.loads(capsys.readouterr().out)["tasks"]
    assert tasks
    empty = tmp_path / "empty.db"
    shutil.copy(tiny_run, empty)
    with sqlite3.connect(empty) as conn:
        conn.execute("DELETE FROM candidates")
    assert main(["show", str(empty), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["hall_of_fame"] == [] and doc["tasks"] == tasks
    for path in (tiny_run, empty):  # (the confirmed and same_as columns depend on the rows)
        assert main(["show", str(path), "--format", fmt]) == 0
        out = capsys.readouterr().out
        header = (next(csv.reader(io.StringIO(out))) if fmt == "csv"
                  else [c.strip() for c in out.splitlines()[0].strip("|").split("|")])
        assert [h for h in header if h in tasks] == tasks, (path, header)


# --- which known loss a row trains as, in every view ---------------------------------------------------------


def test_report_and_dashboard_say_which_known_loss_a_row_trains_as(tiny_run: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    """Before: only `show` noted "(= mae)" beside a loss that trains as a known one; the report's hall of
    fame and the dashboard listed the same row as if the search had found something new."""
    from lossforge.baselines import known_loss_text
    from lossforge.dashboard import run_data
    from lossforge.report import write_report

    assert main(["show", str(tiny_run), "--json", "--top", "5"]) == 0
    hof = json.loads(capsys.readouterr().out)["hall_of_fame"]
    notes = [None if h["same_as"] is None else known_loss_text(h["same_as"]["name"], h["same_as"]["scale"])
             for h in hof]
    assert any(notes) and not all(notes)  # both kinds of row are checked
    markdown = write_report(tiny_run, tmp_path / "report", top=5).read_text()
    rows = markdown.split("## Hall of fame")[1].split("## Baselines")[0].splitlines()[4:4 + len(hof)]
    for h, note, row in zip(hof, notes, rows):
        cell = row.split(" | ")[1]
        assert cell == f"`{h['formula']}`" + (f" (= {note})" if note else ""), row
    served = run_data(tiny_run, top=5)["hall_of_fame"]
    assert [e["same_as_text"] for e in served] == notes


def _progress_of(status: str, elapsed: float, gens: int, config: dict) -> dict:
    from types import SimpleNamespace

    from lossforge.dashboard import _progress

    run = SimpleNamespace(status=status, elapsed_s=elapsed, generations=lambda as_frame: [{"seconds": 10.0}] * gens,
                          candidates=lambda as_frame: [], losses=lambda k: [1], baselines=lambda as_frame: [1])
    return _progress(run, config)


def test_the_progress_bar_of_a_time_limited_run_follows_its_time() -> None:
    """Before: `--time 10m` alone stores 100,000 generations, and the bar showed generations done of
    100,001: empty for the whole run, with "generations done 30/100001" beside it."""
    config = {"generations": 100000, "population": 8, "time_s": 600.0}
    p = _progress_of("running", 150.0, 15, config)
    assert p["limit"] == "time" and p["fraction"] == pytest.approx(0.25)
    assert p["phase"] == "generation 15" and p["eta_s"] == pytest.approx(450.0)
    # where the generations end first, the bar counts them (8 of 11 at 10 s each: 30 s left, 450 s of time)
    p = _progress_of("running", 150.0, 8, {**config, "generations": 10})
    assert p["limit"] == "generations" and p["fraction"] == pytest.approx(8 / 11)
    assert p["phase"] == "generation 8 of 10" and p["eta_s"] == pytest.approx(30.0)
    # no time limit: generations, as before; a finished run is full whatever ended it
    p = _progress_of("running", 150.0, 3, {"generations": 10, "population": 8})
    assert p["limit"] == "generations" and p["fraction"] == pytest.approx(3 / 11)
    assert _progress_of("finished", 598.0, 60, config)["fraction"] == 1.0
    assert _progress_of("interrupted", 300.0, 30, config)["fraction"] == pytest.approx(0.5)
