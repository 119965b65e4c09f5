"""Writes are atomic and never clobber: ``export -o`` and ``report`` refuse a run file, their own input and
(without ``--force``) an existing file; a write that fails midway (a full disk) leaves the old file intact
and no truncated or empty file behind."""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

import pytest

import lossforge
import lossforge.atomic
from lossforge.atomic import check_output, write_atomic
from lossforge.cli import main
from lossforge.errors import ExportError
from lossforge.report import write_report


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.conftest import TINY_SUITE

    folder = tmp_path_factory.mktemp("runs")
    for name in ("victim", "other"):
        lossforge.search(run=folder / f"{name}.db", suite=TINY_SUITE, population=4, generations=1, jobs=1,
                         executor="serial", quiet=True, validate_top=0)
    return folder


def _cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    code = main(list(args))
    err = capsys.readouterr().err
    return code, err


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_export_never_overwrites_its_run_or_another_run(runs: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    victim, other = runs / "victim.db", runs / "other.db"
    before = {p: p.read_bytes() for p in (victim, other)}
    link = tmp_path / "alias.json"
    os.symlink(victim, link)
    for out, force in ((victim, False), (victim, True), (other, True), (link, True),
                       (Path(f"{other}-wal"), True)):
        code, err = _cli(capsys, "export", str(victim), "--format", "json", "-o", str(out),
                         *(["--force"] if force else []))
        assert code == 2 and "refusing" in _one_line(err), (out, err)
    assert {p: p.read_bytes() for p in (victim, other)} == before
    with sqlite3.connect(other) as con:  # still a run
        assert con.execute("PRAGMA quick_check").fetchone()[0] == "ok"


def test_export_refuses_an_existing_file_unless_forced(runs: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "loss.json"
    out.write_text("my notes\n")
    code, err = _cli(capsys, "export", str(runs / "victim.db"), "--format", "json", "-o", str(out))
    assert code == 2 and "--force" in _one_line(err)
    assert out.read_text() == "my notes\n"
    out.chmod(0o640)
    assert _cli(capsys, "export", str(runs / "victim.db"), "--format", "json", "-o", str(out), "--force")[0] == 0
    assert out.read_text().startswith("{") and (out.stat().st_mode & 0o777) == 0o640
    assert lossforge.load(out) is not None
    assert [p.name for p in tmp_path.iterdir()] == ["loss.json"]  # no temporary file left


def test_force_never_replaces_a_device_fifo_or_socket(runs: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    """``-o /dev/null --force`` run as root would swap the device node for a regular file: --force replaces
    files, never a FIFO, a socket or a device (here a FIFO, which any user can make)."""
    import socket
    import stat

    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "s.json"))
    try:
        os.symlink(fifo, tmp_path / "link.json")
        for out, kind in ((fifo, "FIFO"), (tmp_path / "s.json", "socket"), (tmp_path / "link.json", "FIFO")):
            code, err = _cli(capsys, "export", str(runs / "victim.db"), "--format", "json", "-o", str(out), "--force")
            assert code == 2 and kind in _one_line(err), err
        assert stat.S_ISFIFO(fifo.lstat().st_mode) and stat.S_ISSOCK((tmp_path / "s.json").lstat().st_mode)
        assert (tmp_path / "link.json").is_symlink()
        with pytest.raises(ExportError, match="FIFO"):
            write_atomic(fifo, "{}")
        assert stat.S_ISFIFO(fifo.lstat().st_mode)
    finally:
        sock.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.json", "pipe.json", "s.json"]


def _failing_write(monkeypatch: pytest.MonkeyPatch, after: int = 100) -> None:
    """os.write as on a disk that fills up after ``after`` bytes: a partial write, then ENOSPC."""
    real = os.write
    written = {"n": 0}

    def write(fd: int, data) -> int:
        if written["n"] >= after:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = real(fd, bytes(data[: after - written["n"]]))
        written["n"] += n
        return n

    monkeypatch.setattr(lossforge.atomic.os, "write", write)


@pytest.mark.parametrize("existing", [True, False])
def test_a_full_disk_leaves_the_old_export_intact_and_no_partial_file(
        runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
        existing: bool) -> None:
    out = tmp_path / "loss.py"
    if existing:
        assert _cli(capsys, "export", str(runs / "other.db"), "--format", "py", "-o", str(out))[0] == 0
    before = out.read_bytes() if existing else None
    _failing_write(monkeypatch)
    code, err = _cli(capsys, "export", str(runs / "victim.db"), "--format", "py", "-o", str(out), "--force")
    assert code == 2 and "No space left" in _one_line(err)
    if existing:
        assert out.read_bytes() == before
    else:
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == (["loss.py"] if existing else [])


def test_write_atomic_refuses_run_files_whoever_calls(runs: Path, tmp_path: Path) -> None:
    before = (runs / "victim.db").read_bytes()
    with pytest.raises(ExportError, match="run file"):
        write_atomic(runs / "victim.db", "x")
    assert (runs / "victim.db").read_bytes() == before
    write_atomic(tmp_path / "a.txt", "a")
    with pytest.raises(ExportError, match="already exists"):
        write_atomic(tmp_path / "a.txt", "b", replace=False)
    assert (tmp_path / "a.txt").read_text() == "a"
    with pytest.raises(ExportError, match="directory"):
        check_output(runs, force=True)


def test_report_refuses_to_overwrite_unless_forced_and_fails_atomically(
        runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "report"
    assert _cli(capsys, "report", str(runs / "victim.db"), "-o", str(out))[0] == 0
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    assert "report.md" in first
    code, err = _cli(capsys, "report", str(runs / "victim.db"), "-o", str(out))
    assert code == 2 and "--force" in _one_line(err)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first
    _failing_write(monkeypatch, after=10)
    code, err = _cli(capsys, "report", str(runs / "other.db"), "-o", str(out), "--force")
    assert code == 2 and "No space left" in _one_line(err)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first  # nothing half-written, no temp files
    monkeypatch.undo()
    assert write_report(runs / "other.db", out, force=True) == out / "report.md"
    assert (out / "report.md").read_bytes() != first["report.md"]


def test_a_report_whose_figure_fails_midway_leaves_the_old_report_whole(
        runs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--force over an old report: the fitness figure was written before the task figure failed, so the
    old report.md stood beside a new run's figure."""
    import lossforge.report

    out = tmp_path / "report"
    write_report(runs / "victim.db", out)
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    assert {"report.md", "report_fitness.png", "report_tasks.png"} <= first.keys()

    def broken(run, path):
        raise ExportError("the task figure failed")

    from tests.conftest import TINY_SUITE

    lossforge.search(run=tmp_path / "new.db", suite=TINY_SUITE, population=4, generations=2, jobs=1, seed=7,
                     executor="serial", quiet=True, validate_top=0)  # another run: other figures
    monkeypatch.setattr(lossforge.report, "_plot_tasks", broken)
    with pytest.raises(ExportError, match="task figure"):
        write_report(tmp_path / "new.db", out, force=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first


def _leftovers(folder: Path, target: str, suffix: str, age_s: float, tokens=("0a1b2c3d", "9f8e7d6c")) -> list[Path]:
    """Temporary files (one with a SQLite side file) as a killed write leaves them beside ``folder/target``,
    ``age_s`` old."""
    made = []
    for token, extra in ((tokens[0], ""), (tokens[1], "-wal"), (tokens[1], "")):
        leftover = folder / f".{target}.{token}.{suffix}{extra}"
        leftover.write_bytes(b"half")
        os.utime(leftover, (os.path.getmtime(leftover) - age_s,) * 2)
        made.append(leftover)
    return made


def test_temporary_files_a_killed_write_left_are_swept_by_the_next_write(tmp_path: Path) -> None:
    """kill -9 between creating the temporary file and renaming it left '.NAME.TOKEN.tmp' for good; the next
    write of the same target removes the stale ones, and nothing a live writer could hold or that is not
    lossforge's own."""
    stale = _leftovers(tmp_path, "loss.py", "tmp", lossforge.atomic.STALE_AFTER_S + 60)
    keep = [*_leftovers(tmp_path, "loss.py", "tmp", 5, ("12345678", "abcdef01")),  # a live writer's
            *_leftovers(tmp_path, "other.py", "tmp", 10**6)]
    for name in (".loss.py.notatoken.tmp", ".loss.py.0a1b2c3d.tmp.bak", "loss.py.0a1b2c3d.tmp"):
        (tmp_path / name).write_bytes(b"user's")
        os.utime(tmp_path / name, (0, 0))
        keep.append(tmp_path / name)
    write_atomic(tmp_path / "loss.py", "x = 1\n")
    assert (tmp_path / "loss.py").read_text() == "x = 1\n"
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in keep)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["loss.py", *(p.name for p in keep)])


def test_a_new_run_file_sweeps_what_a_killed_creation_left(tmp_path: Path) -> None:
    from lossforge.runfile import RunStore

    stale = _leftovers(tmp_path, "r.db", "creating", lossforge.atomic.STALE_AFTER_S + 60)
    fresh = _leftovers(tmp_path, "r.db", "creating", 1, ("12345678", "abcdef01"))
    RunStore.create(tmp_path / "r.db", {"x": 1}, suite_hash="s").close()
    assert not any(p.exists() for p in stale) and all(p.exists() for p in fresh)
