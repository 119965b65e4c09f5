"""Atomic writes of user-visible files (exports, reports, plots).

:func:`write_atomic` writes the new content to a temporary file in the target's directory, fsyncs it and
moves it into place with one ``os.replace`` (or ``os.link`` when an existing file must not be replaced), so
a reader, a crash or a full disk sees either the old file intact or the new one complete: never a
truncated or 0-byte file. :func:`check_output` refuses destinations that would destroy data: a run file
(whatever ``force`` says), the command's own input, or an existing file unless ``force``. On the reading
side, :func:`read_bounded` reads a small file lossforge is given (a suite, a space, a loss export) without
hanging on a FIFO or reading ``/dev/zero`` forever.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import stat
import time
from pathlib import Path
from typing import Iterable

from lossforge.errors import ExportError

_SQLITE_MAGIC = b"SQLite format 3\x00"
#: SQLite's side files of a database: writing over one corrupts the run beside it.
_SIDE_SUFFIXES = ("-wal", "-shm", "-journal")


def _is_sqlite(path: Path) -> bool:
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            return False
        with open(path, "rb") as handle:
            return handle.read(len(_SQLITE_MAGIC)) == _SQLITE_MAGIC
    except OSError:
        return False


def _is_run_or_side_file(path: Path) -> bool:
    if _is_sqlite(path):
        return True
    for suffix in _SIDE_SUFFIXES:
        if path.name.endswith(suffix) and _is_sqlite(path.with_name(path.name[: -len(suffix)])):
            return True
    return False


def special_kind(mode: int) -> str | None:
    """"a FIFO", "a socket" or "a device" for a file mode of one of those, else None."""
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return None


class NotRegularFile(ValueError):
    """:func:`read_bounded` was given a directory, FIFO, socket or device; ``kind`` says which."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class FileTooLarge(ValueError):
    """:func:`read_bounded` read more than its limit."""


def read_bounded(path: str | os.PathLike[str], limit: int) -> bytes:
    """The bytes of the regular file at ``path``, at most ``limit`` of them.

    Opened non-blocking (a FIFO cannot hang the open) and checked with ``fstat`` on the open descriptor
    (no race with a file swapped after a check); the limit counts bytes actually read, not ``st_size``
    (``/dev/zero`` or a growing file report 0 or less than they hold). Raises :class:`NotRegularFile`,
    :class:`FileTooLarge`, and ``FileNotFoundError`` / ``OSError`` as opening and reading do; callers turn
    them into their own one-line errors."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile("a directory" if stat.S_ISDIR(mode) else special_kind(mode) or "not a regular file")
        chunks, total = [], 0
        while total <= limit:
            chunk = os.read(fd, min(1 << 16, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    finally:
        os.close(fd)
    if total > limit:
        raise FileTooLarge(f"more than {limit} bytes")
    return b"".join(chunks)


def _special_kind(path: Path) -> str | None:
    """What ``path`` is when it is a FIFO, socket or device (never replaced: as root, ``os.replace`` would
    swap ``/dev/null`` for a regular file), or a symlink to one (``/dev/stdout``), else None."""
    for look in (path.lstat, path.stat):
        try:
            kind = special_kind(look().st_mode)
        except OSError:
            continue
        if kind:
            return kind
    return None


def _special_error(path: Path, kind: str) -> ExportError:
    return ExportError(f"refusing to write {path}: it is {kind}, not a file (--force replaces files only); "
                       "name a regular file")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_output(path: str | os.PathLike[str], *, force: bool = False,
                 inputs: Iterable[str | os.PathLike[str]] = ()) -> Path:
    """Raise ExportError unless ``path`` may be written: it must not be one of ``inputs``, a run file (or
    one of its SQLite side files) or a directory, and must not exist unless ``force``."""
    path = Path(path)
    for source in inputs:
        if _same_file(path, Path(source)) or Path(os.path.abspath(path)) == Path(os.path.abspath(source)):
            raise ExportError(f"refusing to write {path}: it is the input being read; choose another output file")
    if _is_run_or_side_file(path):
        raise ExportError(f"refusing to write {path}: it is a run file (--force never overwrites runs); "
                          "choose another output file")
    if path.is_dir():
        raise ExportError(f"cannot write {path}: it is a directory; name a file")
    kind = _special_kind(path)
    if kind is not None:
        raise _special_error(path, kind)
    if (path.exists() or path.is_symlink()) and not force:
        raise ExportError(f"{path} already exists; pass --force to replace it or choose another output file")
    return path


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # not supported here (e.g. some network file systems): the rename itself is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


#: A temporary file older than this is left from a killed process: the writes that use one (exports,
#: reports, plots, a new run file) take seconds, so no live writer holds one this long.
STALE_AFTER_S = 3600.0
_TEMP_TOKEN = re.compile(r"[0-9a-f]{8}")


def temporary_path(path: Path, suffix: str) -> Path:
    """A new temporary name beside ``path`` (``.NAME.TOKEN.SUFFIX``), after removing the ones a killed
    process left there for the same target (older than :data:`STALE_AFTER_S`, with their SQLite side
    files): a kill -9 mid-write left them behind for good. A short prefix of the name: the temporary name
    must fit where the target's own name (up to 255 bytes) fits."""
    prefix = f".{path.name[:64]}."
    now = time.time()
    try:
        siblings = list(os.scandir(path.parent))
    except OSError:
        siblings = []
    for entry in siblings:
        name = entry.name
        if not name.startswith(prefix):
            continue
        token, _, rest = name[len(prefix):].partition(".")
        if not _TEMP_TOKEN.fullmatch(token) or rest not in {suffix, *(suffix + side for side in _SIDE_SUFFIXES)}:
            continue
        try:
            if entry.is_file(follow_symlinks=False) and now - entry.stat(follow_symlinks=False).st_mtime > STALE_AFTER_S:
                os.unlink(entry.path)
        except OSError:
            pass  # gone meanwhile, or not ours to remove: the new write does not depend on it
    return path.parent / f"{prefix}{secrets.token_hex(4)}.{suffix}"


def write_atomic(path: str | os.PathLike[str], data: bytes | str, *, replace: bool = True) -> Path:
    """Write ``data`` (str as UTF-8) to ``path`` atomically; returns ``path``.

    ``replace=False`` fails (ExportError) if ``path`` exists, also when it appears while writing. A run file
    is never replaced. On any error the temporary file is removed and ``path`` is left as it was; the error
    is an ExportError of one line."""
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    if _is_run_or_side_file(path):  # the last guard, whoever calls
        raise ExportError(f"refusing to write {path}: it is a run file; choose another output file")
    kind = _special_kind(path)
    if kind is not None:
        raise _special_error(path, kind)
    directory = path.parent
    tmp = temporary_path(path, "tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as exc:
        raise ExportError(f"cannot write {path}: {exc.strerror or exc}; choose a writable path") from None
    try:
        try:
            _write_all(fd, payload)
            try:
                os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))  # a replaced file keeps its permissions
            except OSError:
                pass
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # atomic, and fails if path exists (rename would replace it)
            except OSError as exc:
                if exc.errno == errno.EEXIST:
                    raise
                if path.exists():  # a file system without hard links
                    raise FileExistsError(errno.EEXIST, "File exists") from None
                os.replace(tmp, path)
        _fsync_dir(directory)
    except FileExistsError:
        raise ExportError(f"{path} already exists; pass --force to replace it or choose another output file") from None
    except OSError as exc:
        raise ExportError(f"cannot write {path}: {exc.strerror or exc}; {path} is unchanged") from None
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
    return path
