"""Shared fixtures: one torch thread (as in workers), a tiny suite for fast end-to-end tests, and the device
the device tests run on (``pytest --device cuda``; default cpu)."""

from __future__ import annotations

import contextlib
import importlib.util
import threading
import os
import signal
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)
# A shell without job control starts background jobs with SIGINT ignored, and an ignored signal is inherited
# across exec: the Ctrl-C tests' searches would then never see their SIGINT. Restore Python's handler, so
# the subprocesses start with the default disposition a terminal user has.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

TINY_SUITE = str(Path(__file__).parent / "data" / "tiny_suite.toml")
SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def load_script(name: str) -> ModuleType:
    """``scripts/NAME.py`` imported as a module (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

#: What a CUDA test needs and how to get it: the venv pins a CPU build of torch by default.
CUDA_HOWTO = (
    f"CUDA tests need a GPU and a CUDA build of torch (this is torch {torch.__version__}, CUDA build: "
    f"{torch.version.cuda or 'none'}): install one with TORCH_SPEC=\"torch==2.13.0 --index-url "
    "https://download.pytorch.org/whl/cu126\" ./scripts/setup (the cuXXX your driver supports), "
    "then run ./scripts/test --device cuda"
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--device", default="cpu",
                     help="device the device tests train on: cpu (default), cuda or cuda:N. " + CUDA_HOWTO)


def pytest_configure(config: pytest.Config) -> None:
    device = config.getoption("--device")
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise pytest.UsageError(f"--device {device!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError(f"--device {device}: no CUDA device is usable. {CUDA_HOWTO}")


@pytest.fixture
def tiny_suite() -> str:
    return TINY_SUITE


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny search on the tiny suite (its ranking has validated losses first), one per module."""
    import lossforge

    path = tmp_path_factory.mktemp("runs") / "found.db"
    lossforge.search(run=path, suite=TINY_SUITE, population=4, generations=1, jobs=1, executor="serial",
                     quiet=True)
    return path


def wait_for_generation(proc, run: Path, gen: int, timeout_s: float = 300.0) -> None:
    """Wait until the search process ``proc`` has recorded generation ``gen`` in ``run``; fail with a message
    if it ends first or the wait runs out, so a signal is never sent at an unknown point."""
    import time

    from lossforge.errors import RunError
    from lossforge.runfile import RunStore

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if run.exists():
            try:
                with RunStore.open(run, readonly=True) as store:
                    last = store.last_generation()
                if last is not None and last.gen >= gen:
                    return
            except RunError:  # the file is being created
                pass
        time.sleep(0.05)
    assert proc.poll() is None, f"the search ended before generation {gen} was seen"
    raise AssertionError(f"generation {gen} not recorded in {timeout_s:.0f} s")


def exported_class(tmp_path: Path, expression: object, name: str = "Exported") -> type:
    """The class of ``expression``'s ``.py`` export, written into ``tmp_path`` and imported."""
    from lossforge.export import to_python

    path = tmp_path / f"loss_{expression.key}.py"
    path.write_text(to_python(expression, name=name))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


@pytest.fixture
def device(request: pytest.FixtureRequest) -> str:
    """The device of the device tests (``--device``)."""
    return request.config.getoption("--device")


@contextlib.contextmanager
def dashboard_server(target: Path, **options: Any) -> Iterator[Any]:
    """A dashboard server on ``target`` (a run file or folder) in a thread, shut down on exit."""
    from lossforge.dashboard import make_server

    server = make_server(target, port=0, **options)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
