"""Run naming for the command line: run names to paths, and the listing of a directory of runs."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Callable

from lossforge.errors import RunError
from lossforge.runfile.format import MAX_NAME_BYTES
from lossforge.runfile.records import RunSummary
from lossforge.runfile.store import RunStore

_RUN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
_log = logging.getLogger("lossforge.runfile")


def is_run_name(text: str) -> bool:
    """Whether ``text`` has the form of a run name (``runs/NAME.db``), not of a path."""
    return bool(_RUN_NAME.fullmatch(text))


def list_runs(directory: str | os.PathLike[str],
              on_skip: Callable[[Path, RunError], None] | None = None) -> list[RunSummary]:
    """Summaries of the run files (``*.db``) in ``directory``, by file name; [] if it does not exist.

    A file that cannot be read as a run (bad file, hostile content) is skipped and reported to
    ``on_skip(path, error)`` (default: a logged warning); this never raises for a bad file.
    """
    directory = Path(directory)
    if not directory.is_dir():
        if directory.exists():
            raise RunError(f"{directory} is not a directory of runs")
        return []
    summaries = []
    for path in sorted(directory.glob("*.db")):
        try:
            with RunStore.open(path, readonly=True) as store:
                summaries.append(store.summary())
        except RunError as exc:
            if on_skip is None:
                _log.warning("skipping %s: %s", path, exc)
            else:
                on_skip(path, exc)
    return summaries


def resolve_run_path(name_or_path: str | os.PathLike[str], runs_dir: str | os.PathLike[str] = "runs") -> Path:
    """Turn a run argument into a path.

    An existing file is used as is; an argument with a directory part or a ``.db`` suffix is a path (it
    may not exist yet, e.g. for a new run); anything else is a run name mapped to ``runs_dir/NAME.db``. A
    name must match ``[A-Za-z0-9_][A-Za-z0-9._-]*``.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):  # was a TypeError from Path()
        raise RunError(f"a run is a name or a path, got {type(name_or_path).__name__}")
    path = Path(name_or_path)
    text = os.fspath(name_or_path)
    try:
        is_file = path.is_file()
    except OSError:  # a name too long for the file system: not an existing file
        is_file = False
    if is_file or path.suffix == ".db" or os.sep in text or (os.altsep and os.altsep in text):
        return path
    if not is_run_name(text):
        raise RunError(f"invalid run name {text!r}: use letters, digits, '.', '_' and '-', not starting with "
                       "'.' or '-' (or give a path to a .db file)")
    longest = MAX_NAME_BYTES - len(".db")
    if len(text) > longest:
        raise RunError(f"run name {text[:40]}... is too long ({len(text)} characters): use at most {longest}")
    return Path(runs_dir) / f"{text}.db"
