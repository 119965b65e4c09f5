"""Load held: while a search writes its run file, reader processes run ``show`` and ``runs`` in a loop; every
read succeeds and the search loses nothing (it ends exactly as the same search run alone)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import lossforge
from lossforge.runfile import RunStore

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
       "OMP_NUM_THREADS": "1"}
READERS = 4

_READER = """
import contextlib, io, sys, time
from pathlib import Path
from lossforge.cli import main
run, runs_dir, stop = sys.argv[1], sys.argv[2], Path(sys.argv[3])
Path(sys.argv[4]).touch()  # imported: the search may start
while not Path(run).exists() and not stop.exists():
    time.sleep(0.005)
ok = failed = 0
while not stop.exists():
    for argv in (["show", run], ["--runs-dir", runs_dir, "runs"]):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
        if code == 0 and not err.getvalue():
            ok += 1
        else:
            failed += 1
            print(argv[0], code, err.getvalue().strip(), file=sys.stderr, flush=True)
print(ok, failed)
"""


def _summary(path: Path):
    with RunStore.open(path, readonly=True) as store:
        return ([(c.key, c.status.value, c.fitness) for c in store.candidates()],
                [g.population for g in store.generations()], store.summary().status.value)


def test_readers_beside_a_writing_search_all_succeed_and_nothing_is_lost(tmp_path, tiny_suite):
    runs = tmp_path / "runs"
    runs.mkdir()
    run, stop = runs / "loaded.db", tmp_path / "stop"
    settings = ["--suite", tiny_suite, "--population", "6", "--generations", "2", "--jobs", "1",
                "--chunk-size", "2", "--validate-top", "1", "--quiet"]
    # the readers start first and the search once all have imported lossforge (seconds on a busy machine,
    # longer than this tiny search), so that they read while it writes
    ready = [tmp_path / f"ready{i}" for i in range(READERS)]
    readers = [subprocess.Popen([sys.executable, "-c", _READER, str(run), str(runs), str(stop), str(flag)], env=ENV,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for flag in ready]
    deadline = time.time() + 300
    while not all(flag.exists() for flag in ready) and time.time() < deadline:
        time.sleep(0.02)
    search = subprocess.Popen([sys.executable, "-m", "lossforge.cli", "--runs-dir", str(runs), "search",
                               "--run", "loaded", *settings], env=ENV, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        _, search_err = search.communicate(timeout=600)
    finally:
        stop.touch()
        results = [r.communicate(timeout=120) for r in readers]
    assert search.returncode == 0, search_err
    counts = [tuple(map(int, out.split())) for out, _ in results]
    assert all(failed == 0 for _, failed in counts), [err for _, err in results]
    assert sum(ok for ok, _ in counts) >= READERS  # they did read, during the search

    lossforge.search(run=tmp_path / "alone.db", suite=tiny_suite, population=6, generations=2, jobs=1,
                     chunk_size=2, validate_top=1, quiet=True)
    assert _summary(run) == _summary(tmp_path / "alone.db")
