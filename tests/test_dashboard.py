"""The dashboard: its JSON document, its server, and the page in a real (headless Chromium) browser during a
running search."""

from __future__ import annotations

import json
from html import unescape
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

import lossforge
from lossforge.dashboard import latex_svg, make_server, run_data
from lossforge.errors import ConfigError, RunError
from lossforge.runfile import RunStore
from tests.conftest import dashboard_server as _serving

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("dash") / "done.db"
    lossforge.search(run=run, suite=str(REPO / "tests/data/tiny_suite.toml"), population=6, generations=2,
                     chunk_size=4, jobs=1, executor="serial", quiet=True)
    return run


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture
def served(finished_run: Path) -> Iterator[str]:
    with _serving(finished_run.parent) as server:
        yield server.url


def test_run_data_carries_the_run_as_the_run_file_has_it(finished_run: Path) -> None:
    doc = run_data(finished_run)
    json.dumps(doc, allow_nan=False)  # strict JSON: no NaN reaches the browser
    with RunStore.open(finished_run, readonly=True) as store:
        gens = store.generations()
        best = store.best(1)[0]
    assert doc["status"] == "finished"
    assert [g["gen"] for g in doc["history"]] == [g.gen for g in gens]
    assert [g["best"] for g in doc["history"]] == [g.stats["best"] for g in gens]
    assert doc["progress"]["done"] == doc["progress"]["total"] == 3 and doc["progress"]["eta_s"] == 0.0
    assert best.formula in [h["formula"] for h in doc["hall_of_fame"]]
    assert all(h["latex"] for h in doc["hall_of_fame"])
    assert all(h["latex_svg"] is None or h["latex_svg"].startswith("<svg") for h in doc["hall_of_fame"])
    assert {b["name"] for b in doc["baselines"]} >= {"mse", "mae", "huber"}
    # the Pareto front: complexity rises and fitness rises along it
    front = doc["pareto"]
    assert all(a["complexity"] < b["complexity"] and a["fitness"] < b["fitness"] for a, b in zip(front, front[1:]))
    assert sum(r["count"] for r in doc["rejections"]) == doc["counts"]["rejected"] + doc["counts"]["failed"]


def test_the_eta_of_a_time_limited_run_is_never_past_its_limit() -> None:
    from types import SimpleNamespace

    from lossforge.dashboard import _progress

    # --time alone allows 100000 generations: 10 s each would read as an ETA of 11 days
    run = SimpleNamespace(status="running", elapsed_s=50.0, generations=lambda as_frame: [{"seconds": 10.0}] * 3,
                          candidates=lambda as_frame: [], losses=lambda k: [1], baselines=lambda as_frame: [1])
    config = {"generations": 100000, "population": 8}
    assert _progress(run, config)["eta_s"] == pytest.approx(10.0 * (100001 - 3))
    assert _progress(run, {**config, "time_s": 120.0})["eta_s"] == pytest.approx(70.0)
    assert _progress(run, {**config, "time_s": 30.0})["eta_s"] == 0.0  # past the limit: the last generation


def test_run_data_before_the_run_file_exists(tmp_path: Path) -> None:
    assert run_data(tmp_path / "later.db")["status"] == "waiting"


def test_latex_svg_renders_and_refuses_nonsense_quietly() -> None:
    svg = latex_svg(r"\sqrt{\left|y_{pred} y_{real}\right|}")
    assert svg is not None and svg.startswith("<svg") and "<path" in svg
    assert latex_svg(r"\frac{") is None


def test_server_serves_the_page_and_the_json(served: str, finished_run: Path) -> None:
    assert served.startswith("http://127.0.0.1:")  # local only by default
    status, page = _get(served)
    assert status == 200 and b"app.js" in page and b"<script src=\"app.js\">" in page
    for asset in ("app.js", "style.css"):
        assert _get(served + asset)[0] == 200
    status, body = _get(served + "api/runs.json")
    assert status == 200 and json.loads(body) == {"runs": ["done"]}
    status, body = _get(served + "api/run.json?run=done")
    assert status == 200 and json.loads(body)["run"] == str(finished_run)
    status, body = _get(served + "api/run.json?run=..%2Fetc")
    assert status == 404 and "no run" in json.loads(body)["error"]
    assert _get(served + "secret.txt")[0] == 404


def test_make_server_refuses_bad_targets_with_one_line(tmp_path: Path) -> None:
    with pytest.raises(RunError, match="no run or directory"):
        make_server(tmp_path / "nothing-here", port=0)
    with pytest.raises(ConfigError, match="port"):
        make_server(tmp_path, port=70000)


def _chromium(url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
         "--virtual-time-budget=6000", "--window-size=1280,1400", *extra, url],
        capture_output=True, text=True, timeout=120,
    )


def _generations(run: Path) -> int:
    if not run.exists():
        return 0
    try:
        with RunStore.open(run, readonly=True) as store:
            return store.summary().generations
    except RunError:  # the file is being created
        return 0


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium; "
                                              ".ci/run installs it)")
def test_dashboard_in_a_browser_during_a_running_search(tmp_path: Path) -> None:
    # a suite slow enough that the search is still running while the browser loads the page
    suite = tmp_path / "slow.toml"
    suite.write_text('name = "slow"\nseeds = [0]\nvalidation_seeds = [7]\n\n[[tasks]]\nname = "outliers"\n'
                     'type = "regression"\npreset = "outliers"\n'
                     'settings = { steps = 300, n_train = 64, n_test = 64, hidden = 8 }\n')
    run = tmp_path / "live.db"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    search = subprocess.Popen(
        [sys.executable, "-m", "lossforge.cli", "search", "--run", str(run), "--suite", str(suite),
         "--population", "8", "--generations", "400", "--jobs", "1", "--executor", "serial", "--quiet"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    server = make_server(run, port=0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 300
        while _generations(run) < 2:
            assert search.poll() is None, f"search ended early: {search.communicate()[1][-2000:]}"
            assert time.monotonic() < deadline, "no generation recorded in 300 s"
            time.sleep(0.2)
        before = _generations(run)
        dom = _chromium(server.url, tmp_path / "profile", "--dump-dom")
        after = _generations(run)
        assert dom.returncode == 0, dom.stderr[-2000:]
        html = dom.stdout
        still_running = search.poll() is None
        shot = tmp_path / "dashboard.png"
        shots = _chromium(server.url, tmp_path / "profile2", f"--screenshot={shot}")
        assert shots.returncode == 0 and shot.stat().st_size > 10_000
        if os.environ.get("LOSSFORGE_ARTIFACTS"):
            out = Path(os.environ["LOSSFORGE_ARTIFACTS"])
            out.mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, out / "dashboard.png")
    finally:
        if search.poll() is None:
            search.send_signal(signal.SIGINT)  # stopped as a user would stop it: the run stays resumable
        search.communicate(timeout=120)
        server.shutdown()
        server.server_close()
    # the script ran (the static page has no numbers) and shows the run as it was while loading
    done = re.search(r"generations done (\d+)/401", html)
    assert done, html[-3000:]
    assert before <= int(done.group(1)) <= after
    if still_running:
        assert re.search(r'id="status" class="badge running">running<', html)
        assert re.search(r"generation \d+ of 400", html)
    with RunStore.open(run, readonly=True) as store:
        # every loss the run scored: the page's hall of fame is the one at load time, and a search still
        # running afterwards may push some of it out of a later top-N
        formulas = {r.formula for r in store.candidates()}
    shown = {unescape(f) for f in re.findall(r'<td class="formula"><code>([^<]*)</code>', html)}
    assert shown and shown <= formulas
    assert "<svg" in html.split('id="hof"')[1]  # rendered LaTeX in the hall of fame
    assert html.count('class="num"') > 5


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium; "
                                              ".ci/run installs it)")
def test_the_page_still_checks_a_finished_run_now_and_then(finished_run: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # a finished or failed run changes when it is resumed (or validated, tuned): the page keeps reading it,
    # at a slower pace (15 s of the browser's virtual time), instead of stopping at the first read
    import lossforge.dashboard as dashboard

    reads = []
    real = dashboard.run_data
    monkeypatch.setattr(dashboard, "run_data", lambda *a, **k: reads.append(1) or real(*a, **k))
    with _serving(finished_run) as server:
        dom = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'p'}",
             "--virtual-time-budget=40000", "--dump-dom", server.url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'class="badge finished">finished<' in dom.stdout
    assert 2 <= len(reads) <= 4  # at 0, 15 and 30 s; a run still polled every 2 s would read it 20 times


def _serve_once(target: Path, path: str) -> tuple[int, bytes]:
    with _serving(target) as server:
        return _get(server.url.rstrip("/") + path)


def test_a_run_file_with_odd_config_gets_one_line_not_a_dropped_connection(finished_run: Path,
                                                                          tmp_path: Path) -> None:
    import sqlite3

    odd = tmp_path / "odd.db"
    shutil.copy(finished_run, odd)
    with sqlite3.connect(odd) as db:
        db.execute("""UPDATE config SET document = json_set(document, '$.search.generations', 'abc')""")
    db.close()
    status, body = _serve_once(odd, "/api/run.json")
    assert status == 404
    error = json.loads(body)["error"]
    assert "generations" in error and "abc" in error and "\n" not in error


def test_dashboard_host_ipv6_and_a_host_not_of_this_machine(finished_run: Path) -> None:
    import socket

    # an address this machine does not have: the fix is --host, not --port
    with pytest.raises(ConfigError, match=r"192\.0\.2\.1.*give --host an address of this machine"):
        make_server(finished_run, port=0, host="192.0.2.1")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("this machine has no IPv6 loopback")
    with _serving(finished_run, host="::1") as server:
        assert server.url.startswith("http://[::1]:")
        status, body = _get(server.url + "api/run.json")
        assert status == 200 and json.loads(body)["status"] == "finished"


def test_nan_and_infinity_anywhere_in_the_run_file_reach_the_page_as_null(finished_run: Path,
                                                                         tmp_path: Path) -> None:
    import sqlite3

    odd = tmp_path / "nan.db"
    shutil.copy(finished_run, odd)
    with sqlite3.connect(odd) as db:  # Python's json reads NaN and Infinity in the stored documents
        db.execute("UPDATE config SET document = replace(document, ?, ?)", ('"seed":0', '"seed":NaN'))
        db.execute("UPDATE generations SET stats = replace(stats, ?, ?)", ('"median":', '"median":-Infinity,"x":'))
    db.close()
    doc = run_data(odd)
    json.dumps(doc, allow_nan=False)
    assert doc["config"]["seed"] is None and all(g["median"] is None for g in doc["history"])
    status, body = _serve_once(odd, "/api/run.json")
    assert status == 200 and json.loads(body)["config"]["seed"] is None


def test_a_request_for_another_host_name_is_refused_on_loopback(served: str) -> None:
    # DNS rebinding: a page on evil.example resolves its name to 127.0.0.1 and reads the run
    request = urllib.request.Request(served + "api/run.json", headers={"Host": "evil.example:8765"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    assert status == 403 and "localhost" in json.loads(body)["error"]
    port = served.rstrip("/").rsplit(":", 1)[1]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "localhost"):
        request = urllib.request.Request(served + "api/runs.json", headers={"Host": host})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200
