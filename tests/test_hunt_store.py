"""Run files, storage and crash safety as a user on a shared machine finds them: a reader beside a writer
that starts later, names too long for the file system, files written for own data on a full disk or in a
directory that cannot be made."""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lossforge.atomic import write_atomic
from lossforge.cli import main
from lossforge.errors import ConfigError, ExportError, RunError
from lossforge.runfile import RunStore, resolve_run_path


def _cli(*argv: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(list(argv))
    return code, err.getvalue()


def _one_line_error(code: int, err: str) -> str:
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("lossforge: error: ") and "Traceback" not in err, err
    return err


def _add(store: RunStore, start: int, stop: int, text: str) -> None:
    for i in range(start, stop):
        store.record_candidate(5, ["add", "y_pred", float(i)], status="complete", key=f"k{i}", fitness=float(i),
                               formula=text * 400, suite_hash="s")


# ------------------------------------------------------------------------- a reader beside a later writer
def test_a_reader_opened_before_a_writer_reads_its_writes_not_a_corrupted_file(tmp_path: Path) -> None:
    """A read-only store opened while no writer had the file open reads it as immutable; a `resume` that
    then starts, writes and checkpoints rewrote pages under it: `show`/`report`/the dashboard got
    'database disk image is malformed' (or the run as it was) from a healthy run."""
    path = tmp_path / "r.db"
    with RunStore.create(path, {"search": {}}, suite_hash="s") as store:
        _add(store, 0, 300, "x")
    reader = RunStore.open(path, readonly=True)
    try:
        assert len(reader.candidates()) == 300 and not Path(f"{path}-wal").exists()  # immutable, no writer
        with RunStore.open(path, lease=True) as writer:
            writer._db.execute("PRAGMA cache_size = 1")  # spill: the checkpoint rewrites the pages read
            _add(writer, 300, 900, "y")
            writer._db.execute("DELETE FROM candidates WHERE id < 200")
        with RunStore.open(path, readonly=True) as fresh:
            expected = [(c.id, c.key) for c in fresh.candidates()]
        assert [(c.id, c.key) for c in reader.candidates()] == expected
        assert reader.best(1)[0].key == "k899" and reader.summary().candidates == len(expected) == 701
    finally:
        reader.close()
    assert not Path(f"{path}-wal").exists() and not Path(f"{path}-shm").exists()


def test_a_writer_changing_the_file_during_one_immutable_read_is_said_not_returned(tmp_path: Path) -> None:
    """The read in progress when a writer starts and checkpoints may mix old and new pages (SQLite does not
    lock an immutable file): it was returned as data, or as 'database disk image is malformed'. Now it is
    one line saying to read again, and the next read sees the writer's rows."""
    path = tmp_path / "r.db"
    with RunStore.create(path, {"search": {}}, suite_hash="s") as store:
        _add(store, 0, 50, "x")
    with RunStore.open(path, readonly=True) as reader:
        assert reader._immutable_stamp is not None  # no writer: read immutable
        with pytest.raises(RunError, match="changed while it was read .* read it again"):
            with reader._read() as conn:
                first = conn.execute("SELECT COUNT(*) FROM candidates").fetchone()[0]
                with RunStore.open(path, lease=True) as writer:  # starts, writes, checkpoints on close
                    _add(writer, 50, 400, "y")
        assert first == 50
        assert reader.summary().candidates == 400  # the next read follows the writer
        with reader._read() as conn:  # and a read no writer overlaps is not refused
            assert conn.execute("SELECT COUNT(*) FROM candidates").fetchone()[0] == 400


def test_a_reader_beside_a_live_writer_sees_each_commit(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    with RunStore.create(path, {"search": {}}, suite_hash="s") as store:
        _add(store, 0, 2, "x")
    with RunStore.open(path, readonly=True) as reader:
        assert reader.summary().candidates == 2
        with RunStore.open(path, lease=True) as writer:
            _add(writer, 2, 3, "x")
            assert reader.summary().candidates == 3  # the writer's WAL is read, not the stale file
            _add(writer, 3, 5, "x")
            assert [c.key for c in reader.candidates()] == [f"k{i}" for i in range(5)]


# ------------------------------------------------------------------------------------ very long names
def test_a_run_name_too_long_for_the_file_system_is_one_line(tmp_path: Path) -> None:
    """`lossforge show|search|resume NAME` with a 300-character name gave an OSError traceback
    (File name too long) from the path checks."""
    long = "a" * 300
    with pytest.raises(RunError, match="too long"):
        resolve_run_path(long, tmp_path)
    for argv in (["show", long], ["resume", long], ["export", long, "--format", "json"],
                 ["show", str(tmp_path / f"{long}.db")]):
        _one_line_error(*_cli("--runs-dir", str(tmp_path), *argv))
    with pytest.raises(RunError, match="too long"):
        RunStore.create(tmp_path / f"{'b' * 250}.db", {}, suite_hash="s")  # its -journal would not fit
    assert list(tmp_path.iterdir()) == []


def test_the_longest_allowed_run_name_is_created_written_and_reopened(tmp_path: Path) -> None:
    """A name at the limit is legal: the temporary name it was built under (name + 19 characters) did not
    fit, so it was refused as 'File name too long'."""
    name = "c" * (255 - len("-journal") - len(".db"))  # its side files still fit in 255 bytes
    path = resolve_run_path(name, tmp_path)
    with RunStore.create(path, {"search": {}}, suite_hash="s", lease=True) as store:
        _add(store, 0, 3, "x")
    with RunStore.open(path, lease=True) as store:
        _add(store, 3, 4, "x")
    with RunStore.open(path, readonly=True) as store:
        assert store.summary().candidates == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_an_export_to_a_long_legal_file_name_is_written(tmp_path: Path) -> None:
    target = tmp_path / ("e" * 250)
    write_atomic(target, "text")
    assert target.read_text() == "text" and [p.name for p in tmp_path.iterdir()] == [target.name]
    with pytest.raises(ExportError, match="already exists"):
        write_atomic(target, "other", replace=False)
    assert target.read_text() == "text"


# --------------------------------------------------------------------------- files written for own data
def test_own_data_in_a_directory_that_cannot_be_made_is_one_line(tmp_path: Path) -> None:
    """`lossforge search --data` with a runs directory that cannot be created (read-only, or under a file)
    gave an OSError traceback from writing the suite file; the API's in-memory data the same."""
    from lossforge.data_sources import materialize

    blocker = tmp_path / "file"
    blocker.write_text("")
    data = tmp_path / "d.csv"
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(40, 2))
    data.write_text("a,b,y\n" + "".join(f"{a},{b},{a + 2 * b}\n" for a, b in rows))
    err = _one_line_error(*_cli("--runs-dir", str(blocker / "runs"), "search", "--data", str(data),
                                "--noise", "gaussian:0.2", "--problem", "regression", "--population", "4",
                                "--generations", "1", "--quiet"))
    assert "cannot create" in err
    with pytest.raises(ConfigError, match="cannot create"):
        materialize((rows, rows.sum(1)), blocker / "data")
    assert blocker.read_text() == ""


_FULL_DISK = """
import resource, sys
import numpy as np
from lossforge.data_sources import materialize
from lossforge.errors import LossforgeError
resource.setrlimit(resource.RLIMIT_FSIZE, (20000, resource.RLIM_INFINITY))
x = np.arange(8000, dtype=float).reshape(2000, 4)
try:
    materialize((x, x.sum(1)), sys.argv[1])
except LossforgeError as exc:
    print("refused:", exc)
"""


def test_in_memory_data_on_a_full_disk_is_refused_and_leaves_no_file(tmp_path: Path) -> None:
    """The .npz of in-memory data is named by its content and reused when that name exists, so it must
    appear complete or not at all; a full disk (here a file-size limit) gave an OSError traceback."""
    out = subprocess.run([sys.executable, "-c", _FULL_DISK, str(tmp_path / "data")], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert out.stdout.startswith("refused: cannot write") and "File too large" in out.stdout, out.stdout
    assert list((tmp_path / "data").iterdir()) == []


def test_a_reader_through_a_symlink_sees_the_live_writer(tmp_path: Path) -> None:
    """SQLite names the side files after the file a symlink points to; the check for a live writer looked
    beside the link, so `show runs/link.db` read the run immutable, missing every commit in the WAL (and
    open to the malformed-page race above)."""
    real = tmp_path / "real.db"
    with RunStore.create(real, {"search": {}}, suite_hash="s"):
        pass
    link = tmp_path / "link.db"
    link.symlink_to(real)
    with RunStore.open(link, lease=True) as writer:
        _add(writer, 0, 5, "x")
        with RunStore.open(link, readonly=True) as reader:
            assert reader.summary().candidates == 5
            assert [c.key for c in reader.candidates()] == [f"k{i}" for i in range(5)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.db", "real.db"]


# ---------------------------------------------------------------------------------- lease settings
def test_a_typo_in_the_lease_timeout_breaks_no_reader_and_refuses_a_writer_in_one_line(
        tiny_run: Path, tmp_path: Path) -> None:
    """LOSSFORGE_LEASE_TIMEOUT_S=2m broke every command (even `--version`) with a ValueError at import."""
    import os

    run = tmp_path / "r.db"
    shutil.copy(tiny_run, run)
    before = run.read_bytes()
    env = {**os.environ, "LOSSFORGE_LEASE_TIMEOUT_S": "2m"}
    script = ("import sys; from lossforge.cli import main; print(main(['show', sys.argv[1]]), file=sys.stderr); "
              "sys.exit(main(['resume', sys.argv[1]]))")
    out = subprocess.run([sys.executable, "-c", script, str(run)], capture_output=True, text=True, timeout=300,
                         env=env)
    assert "Traceback" not in out.stderr and out.returncode == 2, out.stderr
    assert out.stderr.splitlines() == ["0", "lossforge: error: LOSSFORGE_LEASE_TIMEOUT_S='2m' is not a number of "
                                       "seconds > 0; unset it or set e.g. LOSSFORGE_LEASE_TIMEOUT_S=60"]
    assert run.read_bytes() == before


@pytest.mark.parametrize("heartbeat, timeout, message", [
    (float("nan"), 60.0, "is not a number of seconds > 0"),
    (5.0, 0.0, "is not a number of seconds > 0"),
    (5.0, 3.0, "must be at least twice the heartbeat"),  # a live writer would be taken over between beats
])
def test_bad_lease_timings_refuse_a_writer_and_leave_no_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            heartbeat: float, timeout: float, message: str) -> None:
    from lossforge.runfile import lease as lease_module

    path = tmp_path / "r.db"
    with RunStore.create(path, {"search": {}}, suite_hash="s"):
        pass
    before = path.read_bytes()
    monkeypatch.setattr(lease_module, "HEARTBEAT_S", heartbeat)
    monkeypatch.setattr(lease_module, "STALE_AFTER_S", timeout)
    with pytest.raises(RunError, match=message):
        RunStore.open(path, lease=True)
    with pytest.raises(RunError, match=message):
        RunStore.create(tmp_path / "new.db", {"search": {}}, suite_hash="s", lease=True)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["r.db"]
    with RunStore.open(path, readonly=True) as store:  # readers never need the lease
        assert store.lease_holder() is None


# ------------------------------------------------------------------------------------------ dashboard
def test_the_dashboard_of_a_runs_directory_skips_a_dangling_run_link(tiny_run: Path, tmp_path: Path) -> None:
    """The listing stat()ed every *.db: one dangling symlink (a run moved away) or a file removed between the
    listing and the stat failed every request of the page with a traceback and a dropped connection."""
    import json
    import threading
    import urllib.request

    from lossforge.dashboard import make_server

    shutil.copy(tiny_run, tmp_path / "good.db")
    (tmp_path / "moved.db").symlink_to(tmp_path / "elsewhere" / "moved.db")
    server = make_server(tmp_path, port=0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        with urllib.request.urlopen(server.url + "api/runs.json", timeout=30) as response:
            assert json.loads(response.read()) == {"runs": ["good"]}
        with urllib.request.urlopen(server.url + "api/run.json", timeout=30) as response:
            assert json.loads(response.read())["run"].endswith("good.db")
    finally:
        server.shutdown()
        server.server_close()


def test_two_searches_on_the_same_data_both_get_its_suite_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite file of own data is named by its content; a second search that checked for it just before
    the first wrote it was refused with '... exists; choose another -o or remove it' (an -o it never gave)."""
    from lossforge import data_suite

    spec = {"name": "d", "tasks": [{"name": "t", "type": "regression", "preset": "outliers"}]}
    first = data_suite.suite_file_for(spec, tmp_path)
    real_exists = Path.exists
    seen: list[Path] = []

    def exists_before_the_other_wrote(self: Path) -> bool:  # the check ran before the other search's write
        if not seen and self.name == first.name:
            seen.append(self)
            return False
        return real_exists(self)

    monkeypatch.setattr(Path, "exists", exists_before_the_other_wrote)
    assert data_suite.suite_file_for(spec, tmp_path) == first and seen
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == [first.name]


# ---------------------------------------------------------------------------------- read-only run files
@contextlib.contextmanager
def _read_only(target: Path):
    """``target`` made unwritable for this process: chmod for a user, the immutable attribute for root."""
    import os

    mode = target.stat().st_mode
    target.chmod(mode & 0o555)
    immutable = False
    if os.access(target, os.W_OK) and shutil.which("chattr"):
        immutable = subprocess.run(["chattr", "+i", str(target)], capture_output=True).returncode == 0
    try:
        if os.access(target, os.W_OK):
            pytest.skip("cannot make a file read-only for this user here")
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(target)], check=True)
        target.chmod(mode)


@pytest.mark.parametrize("what", ["file", "directory"])
def test_resuming_a_read_only_run_says_so_and_leaves_nothing_beside_it(tiny_run: Path, tmp_path: Path,
                                                                       what: str) -> None:
    """SQLite's 'unable to open database file' / 'attempt to write a readonly database' named neither the
    cause nor the fix, and a read-only run file in a writable directory was left with -wal/-shm files."""
    directory = tmp_path / "runs"
    directory.mkdir()
    run = directory / "r.db"
    shutil.copy(tiny_run, run)
    before = run.read_bytes()
    with _read_only(run if what == "file" else directory):
        err = _one_line_error(*_cli("resume", str(run)))
        shown, _ = _cli("show", str(run))
    assert f"{'the run file' if what == 'file' else 'its directory'} " in err and "is read-only" in err, err
    assert "copy the run to a writable directory" in err and shown == 0
    assert run.read_bytes() == before and sorted(p.name for p in directory.iterdir()) == ["r.db"]


def test_the_dashboard_of_a_runs_directory_opens_on_the_newest_intact_run(tmp_path: Path, tiny_run: Path) -> None:
    # Before: a damaged newest file made the page open on an error, though an intact run sat beside it
    import os
    import shutil

    from lossforge.dashboard import make_server

    shutil.copy(tiny_run, tmp_path / "good.db")
    (tmp_path / "broken.db").write_bytes(b"not a run file at all")
    os.utime(tmp_path / "good.db", (1_000_000, 1_000_000))  # the damaged file is the newest
    server = make_server(tmp_path, port=0)
    try:
        assert [p.name for p in server.runs()][0] == "broken.db"
        assert server.pick(None).name == "good.db"
        assert server.pick("broken").name == "broken.db"  # asked for by name, it is still shown (as an error)
    finally:
        server.server_close()
