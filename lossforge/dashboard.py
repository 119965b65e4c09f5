"""``lossforge dashboard``: a local web page that follows a run (running or finished).

The page (``lossforge/dashboard/index.html``, ``app.js``, ``style.css``: no CDN, no library) polls
``/api/run.json`` every two seconds and draws generation progress and ETA, best and median fitness per
generation, the Pareto front, the hall of fame with readable and rendered formulas, per-task scores beside
the baselines and the rejection reasons. ``/api/runs.json`` lists the runs of a directory; ``?run=NAME``
picks one (default: the most recently changed).

Server: the standard library's :class:`http.server.ThreadingHTTPServer`. The dashboard serves three static
files and two read-only JSON documents to one local browser; a framework (Flask, aiohttp) would add a
dependency and nothing this needs. Each request opens the run file read-only (SQLite WAL lets a reader and
the search's writer work at once), so the page shows what the search has recorded so far. LaTeX is rendered
on the server by matplotlib's mathtext to SVG (no MathJax/KaTeX download). It binds 127.0.0.1 by default.
"""

from __future__ import annotations

import errno
import io
import ipaddress
import math
import os
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from lossforge.errors import ConfigError, LossforgeError, RunError, printable
from lossforge.runfile.format import validate
from lossforge.strict_json import dumps, finite

__all__ = ["run_data", "make_server", "serve", "latex_svg"]

#: Seconds between the page's polls of ``/api/run.json``.
POLL_S = 2.0
_STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
           "/app.js": ("app.js", "text/javascript; charset=utf-8"),
           "/style.css": ("style.css", "text/css; charset=utf-8")}
_svg_cache: dict[str, str | None] = {}
_mathtext_lock = threading.Lock()  # matplotlib is not thread-safe; the server is


def latex_svg(latex: str) -> str | None:
    """``latex`` rendered by matplotlib's mathtext as an SVG document, or None if mathtext cannot parse it
    (the page then shows the LaTeX source). Cached: a hall of fame changes slowly."""
    if latex in _svg_cache:
        return _svg_cache[latex]
    from matplotlib import mathtext

    buf = io.BytesIO()
    with _mathtext_lock:
        try:
            mathtext.math_to_image(f"${latex}$", buf, format="svg", dpi=72)
            svg: str | None = buf.getvalue().decode("utf-8")
            svg = svg[svg.index("<svg"):]  # drop the XML prolog and doctype: the SVG goes inline
        except (ValueError, RuntimeError):  # mathtext's parse errors are ValueErrors
            svg = None
    if len(_svg_cache) > 2000:
        _svg_cache.clear()
    _svg_cache[latex] = svg
    return svg


def _num(value: Any) -> float | None:
    return None if value is None or not math.isfinite(float(value)) else float(value)


def _whole(run: Any, config: dict[str, Any], key: str) -> int:
    """``config[key]`` as a whole number; a run file that says something else is refused with one line."""
    value = config.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RunError(f"run file {run.path}: its config gives {key} = {value!r}, not a whole number; "
                       "the file is damaged or was not written by lossforge")
    return value


def _progress(run: Any, config: dict[str, Any]) -> dict[str, Any]:
    """Which phase the run is in, generations done of how many, an ETA from the finished generations'
    mean time (none before the first has finished: a guess from set-up time would mislead), never past the
    run's time limit, and ``fraction`` done for the progress bar. ``limit`` says what ends the run:
    ``"time"`` where ``--time`` comes first (``--time`` alone allows 100,000 generations, and a bar of
    generations done would stay empty), else ``"generations"``."""
    gens = run.generations(as_frame=False)
    total = _whole(run, config, "generations") + 1  # generation 0 counts
    done = len(gens)
    population = _whole(run, config, "population")
    current = done  # the generation in progress
    in_gen = sum(1 for c in run.candidates(as_frame=False) if c["generation"] >= current) if done < total else 0
    seconds = [float(g["seconds"]) for g in gens
               if isinstance(g.get("seconds"), (int, float)) and math.isfinite(g["seconds"])]
    limit = config.get("time_s")  # --time: no generation starts that would end past it
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not (math.isfinite(limit) and limit > 0):
        limit = None
    elapsed = float(run.elapsed_s or 0.0)
    by_generations = sum(seconds) / len(seconds) * (total - done) if seconds else None
    time_first = limit is not None and (by_generations is None or by_generations > limit - elapsed)
    if run.status != "running":
        phase, eta = run.status, 0.0 if run.status == "finished" else None
    elif done == 0 and not run.losses(1) and not run.baselines(as_frame=False):
        phase, eta = "baselines", None
    elif done < total:
        phase = f"generation {current}" + ("" if time_first else f" of {total - 1}")
        eta = by_generations
        if eta is not None and limit is not None:
            eta = min(eta, max(0.0, limit - elapsed))
    else:
        phase, eta = "validation and tuning", None
    if run.status == "finished":
        fraction = 1.0
    elif time_first:
        fraction = min(1.0, elapsed / limit)
    else:
        fraction = done / total
    return {"phase": phase, "done": done, "total": total, "population": population,
            "in_generation": in_gen, "eta_s": eta, "elapsed_s": run.elapsed_s, "fraction": fraction,
            "limit": "time" if time_first else "generations", "time_s": limit}


def run_data(path: str | os.PathLike[str], top: int = 10) -> dict[str, Any]:
    """The document ``/api/run.json`` serves: ``lossforge show --json``'s fields (see
    :meth:`lossforge.results.Run.to_dict`) plus ``progress``, ``history`` (each generation's statistics),
    ``pareto``, ``rejections`` and, on each hall-of-fame entry, ``latex``, ``latex_svg`` and ``same_as_text``
    (``"0.74 x gce"`` where it trains as a known loss, as ``show`` notes it). A path with no run yet gives
    ``{"run": path, "status": "waiting"}`` (the page keeps polling)."""
    from lossforge.baselines import known_loss_text
    from lossforge.results import open_run

    path = Path(path)
    if not path.exists():
        return {"run": str(path), "status": "waiting", "hall_of_fame": [], "baselines": [], "history": []}
    run = open_run(path)
    doc = run.to_dict(top=top)
    for entry, loss in zip(doc["hall_of_fame"], run.losses(top)):
        entry["latex"] = loss.latex()
        entry["latex_svg"] = latex_svg(entry["latex"])
        same = entry["same_as"]
        entry["same_as_text"] = None if same is None else known_loss_text(same["name"], same["scale"])
    doc["config"] = {k: run.config.get(k) for k in ("population", "generations", "seed", "space", "selection")}
    doc["progress"] = _progress(run, run.config)
    doc["history"] = [{k: (_num(v) if isinstance(v, float) else v) for k, v in g.items()}
                          for g in run.generations(as_frame=False)]
    doc["pareto"] = run.pareto()
    doc["complete"] = [{"complexity": c["complexity"], "fitness": c["fitness"], "formula": c["formula"]}
                       for c in run.candidates(as_frame=False) if c["status"] == "complete"][-2000:]
    doc["rejections"] = run.rejection_reasons()
    doc["counts"] = run.counts()
    return finite(doc)


def _runs_in(directory: Path) -> list[Path]:
    """The run files of ``directory``, newest first; one that vanished since the listing (a failed start
    removes its file) or a dangling symlink is left out, not an error of every request."""
    found = []
    for path in directory.glob("*.db"):
        try:
            found.append((path.stat().st_mtime, path.name, path))
        except OSError:
            continue
    return [path for *_, path in sorted(found, reverse=True)]


def _intact(path: Path) -> bool:
    try:
        validate(path)
    except RunError:
        return False
    return True


class _Handler(BaseHTTPRequestHandler):
    server: "DashboardServer"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass  # a poll every two seconds would fill the terminal

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, doc: Any, status: int = HTTPStatus.OK) -> None:
        self._send(status, dumps(doc).encode("utf-8"), "application/json")

    def _host_allowed(self) -> bool:
        """On a loopback address only a request naming this machine (localhost, 127.x, ::1) is served: a web
        page elsewhere that points its own host name at 127.0.0.1 (DNS rebinding) must not read the run."""
        bound = self.server.server_address[0]
        if not (bound.startswith("127.") or bound in ("::1", "localhost")):
            return True  # --host chose to serve other machines
        name = (self.headers.get("Host") or "").strip().lower()
        name = name[1:name.index("]")] if name.startswith("[") and "]" in name else name.rsplit(":", 1)[0]
        if name == "localhost":
            return True
        try:  # an address, not a name that starts like one: 127.0.0.1.evil.example is the attacker's name
            return ipaddress.ip_address(name).is_loopback
        except ValueError:
            return False

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        url = urlparse(self.path)
        if not self._host_allowed():
            return self._json({"error": "this dashboard answers only requests for localhost or 127.0.0.1"},
                              HTTPStatus.FORBIDDEN)
        if url.path in _STATIC:
            name, content_type = _STATIC[url.path]
            body = resources.files("lossforge").joinpath("dashboard", name).read_bytes()
            return self._send(HTTPStatus.OK, body, content_type)
        query = parse_qs(url.query)
        try:
            if url.path == "/api/runs.json":
                return self._json({"runs": [p.stem for p in self.server.runs()]})
            if url.path == "/api/run.json":
                return self._json(run_data(self.server.pick(query.get("run", [None])[0])))
        except LossforgeError as exc:
            return self._json({"error": str(exc)}, HTTPStatus.NOT_FOUND)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            # content of a damaged run file that the readers did not foresee: one line to the page, not a
            # traceback on the terminal and a dropped connection
            return self._json({"error": f"cannot read this run ({type(exc).__name__}: {exc}); the run file may "
                               "be damaged"}, HTTPStatus.INTERNAL_SERVER_ERROR)
        self._json({"error": f"no such page: {url.path}"}, HTTPStatus.NOT_FOUND)


class DashboardServer(ThreadingHTTPServer):
    """Serves the dashboard of one run file, or of the runs in a directory."""

    daemon_threads = True

    def __init__(self, target: Path, host: str, port: int) -> None:
        self.target = target
        if ":" in host:  # an IPv6 address such as ::1 (the stdlib's server is IPv4 unless told)
            self.address_family = socket.AF_INET6
        super().__init__((host, port), _Handler)

    def runs(self) -> list[Path]:
        """The run files this server shows."""
        return _runs_in(self.target) if self.target.is_dir() else [self.target]

    def pick(self, name: str | None) -> Path:
        """The run file ``?run=NAME`` names (only one of :meth:`runs`), by default the newest."""
        if not self.target.is_dir():
            return self.target
        runs = self.runs()
        if name is None:
            if not runs:
                raise RunError(f"no runs in {self.target} yet")
            # the newest run that is intact: a damaged newest file made the page open on an error
            return next((path for path in runs if _intact(path)), runs[0])
        for path in runs:
            if path.stem == name:
                return path
        raise RunError(f"no run {name!r} in {self.target}")

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def make_server(target: str | os.PathLike[str], port: int = 8765, host: str = "127.0.0.1") -> DashboardServer:
    """A dashboard server for a run file (which may not exist yet: a search about to start) or a directory
    of runs; ``port=0`` picks a free port (see ``server.url``)."""
    target = Path(target)
    if isinstance(host, str) and not host.strip():  # "" binds every interface: an unset variable exposed the page
        raise ConfigError("--host '' would listen on every network interface, and the page has no login; give "
                          "127.0.0.1 (this machine only), or 0.0.0.0 if you mean every interface")
    if not (0 <= port <= 65535):
        raise ConfigError(f"port {port} is out of range; use 1-65535 (0: any free port)")
    if not target.exists() and target.suffix != ".db":
        raise RunError(f"no run or directory at {target}; give a run file, a run name or a runs directory")
    try:
        return DashboardServer(target, host, port)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot listen on host {host!r} ({exc.strerror or exc}); give --host an address or "
                          "name of this machine, such as 127.0.0.1") from None
    except OSError as exc:
        fix = ("give --host an address of this machine, such as 127.0.0.1"
               if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT) else "choose another --port")
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); {fix}") from None


def serve(target: str | os.PathLike[str], port: int = 8765, host: str = "127.0.0.1") -> None:
    """Serve the dashboard until interrupted."""
    server = make_server(target, port, host)
    print(f"lossforge dashboard of {printable(str(target))}: {server.url}  (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
