"""A demanding user's look at the views of a run: the dashboard's host check, ``show --format markdown`` and
``report -o``. Hand-written run contents go in through :mod:`lossforge.runfile`, as a tool or an editor would."""

from __future__ import annotations

import contextlib
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from lossforge.dashboard import make_server


# --- the dashboard's host check -----------------------------------------------------------------------------


@contextlib.contextmanager
def _serving(target: Path) -> Iterator[str]:
    server = make_server(target, port=0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server.url
    finally:
        server.shutdown()
        server.server_close()


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
    with _serving(tmp_path) as url:
        assert _status(url + "api/runs.json", host) == 403


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.1:8765", "127.1.2.3:80", "localhost", "LOCALHOST:8765",
                                  "[::1]:8765"])
def test_loopback_addresses_and_localhost_are_still_served(tmp_path: Path, host: str) -> None:
    with _serving(tmp_path) as url:
        assert _status(url + "api/runs.json", host) == 200
