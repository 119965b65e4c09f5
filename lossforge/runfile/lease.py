"""Run leases: the one process allowed to write a run, proved alive by a heartbeat (as Optuna's heartbeat
and ``fail_stale_trials``).

A search or resume takes the lease before it reads the state it will continue from and gives it back when
it closes the run. A background thread renews the heartbeat every :data:`HEARTBEAT_S` seconds through its own
connection. A second process is refused with one line naming the holder. A lease is *stale*, and taken over,
when its holder is on this host and its process is gone (or the pid now belongs to another process), or when
its heartbeat is older than :data:`STALE_AFTER_S` (a holder on another host, or one that hangs).
"""

from __future__ import annotations

import math
import os
import secrets
import socket
import sqlite3
import threading
import time
from pathlib import Path

from lossforge.errors import RunError
from lossforge.executor import pid_alive
from lossforge.runfile.format import connect
from lossforge.runfile.records import LeaseRecord, number, want


def _seconds(name: str, default: float) -> float:
    """The environment's value of ``name`` as seconds (NaN when it is not a number): checked where a lease is
    taken, so a typo refuses a writer with one line instead of breaking every command at import."""
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        return float(text)
    except ValueError:
        return math.nan


#: Seconds between heartbeats.
HEARTBEAT_S = _seconds("LOSSFORGE_HEARTBEAT_S", 5.0)
#: A heartbeat older than this (seconds) marks the holder as gone.
STALE_AFTER_S = _seconds("LOSSFORGE_LEASE_TIMEOUT_S", 60.0)


def check_timing() -> None:
    """RunError unless the heartbeat and the lease timeout are positive numbers of seconds and a live holder
    beats well within the timeout (else a second writer would take over a live one)."""
    for name, value, default in (("LOSSFORGE_HEARTBEAT_S", HEARTBEAT_S, 5),
                                 ("LOSSFORGE_LEASE_TIMEOUT_S", STALE_AFTER_S, 60)):
        if not (math.isfinite(value) and value > 0):
            raise RunError(f"{name}={os.environ.get(name, value)!r} is not a number of seconds > 0; unset it "
                           f"or set e.g. {name}={default}")
    if 2 * HEARTBEAT_S > STALE_AFTER_S:
        raise RunError(f"the lease timeout (LOSSFORGE_LEASE_TIMEOUT_S, {STALE_AFTER_S:g} s) must be at least twice "
                       f"the heartbeat (LOSSFORGE_HEARTBEAT_S, {HEARTBEAT_S:g} s), or a live writer is taken over; "
                       "raise the timeout or lower the heartbeat")


def process_start(pid: int) -> str:
    """An identifier of process ``pid``'s start (boot id + start tick on Linux); '' where unknown."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
        return f"{boot}:{stat.rsplit(')', 1)[1].split()[19]}"
    except (OSError, IndexError):
        return ""


def read_lease(row: sqlite3.Row | None, where: str) -> LeaseRecord | None:
    """A ``lease`` row as a record (shape-checked), or None."""
    if row is None:
        return None
    return LeaseRecord(
        host=want(row["host"], str, f"{where} host"),
        pid=want(row["pid"], int, f"{where} pid"),
        process_start=want(row["process_start"], str, f"{where} process_start"),
        token=want(row["token"], str, f"{where} token"),
        acquired_at=number(row["acquired_at"], f"{where} acquired_at"),
        heartbeat_at=number(row["heartbeat_at"], f"{where} heartbeat_at"),
    )


def is_stale(lease: LeaseRecord, now: float) -> bool:
    """True when the holder is known to be gone (see the module docstring)."""
    if now - lease.heartbeat_at > STALE_AFTER_S:
        return True
    if lease.host == socket.gethostname() and lease.pid != os.getpid():
        if not pid_alive(lease.pid):
            return True
        start = process_start(lease.pid)
        return bool(start and lease.process_start and start != lease.process_start)
    return False


class Lease:
    """The lease of one run file, held by this process from :meth:`acquire` to :meth:`release`.

    Also a context manager. ``lost`` becomes True if another process took the lease over (it judged this
    one dead); the store then refuses every write.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.token = secrets.token_hex(8)
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self, conn: sqlite3.Connection) -> None:
        """Take the lease in one write transaction through ``conn``; RunError naming the holder if it is
        held by a live process. A refused attempt writes nothing."""
        check_timing()
        now = time.time()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                held = read_lease(conn.execute("SELECT * FROM lease WHERE id = 1").fetchone(),
                                  f"run file {self.path}: lease")
                if held is not None and not is_stale(held, now):
                    raise RunError(f"run {self.path} is in use by {held.describe(now)}; wait for it to finish, "
                                   "or stop that process (a dead holder's lease is taken over)")
                conn.execute("INSERT OR REPLACE INTO lease (id, host, pid, process_start, token, acquired_at, "
                             "heartbeat_at) VALUES (1, ?, ?, ?, ?, ?, ?)",
                             (socket.gethostname(), os.getpid(), process_start(os.getpid()), self.token, now, now))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise RunError(f"cannot take the lease of run file {self.path}: {exc}") from exc
        self._thread = threading.Thread(target=self._beat, name=f"lease {self.path.name}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        try:
            conn = connect(self.path, readonly=False)
        except sqlite3.Error:
            return
        try:
            while not self._stop.wait(HEARTBEAT_S):
                try:
                    cursor = conn.execute("UPDATE lease SET heartbeat_at = ? WHERE id = 1 AND token = ?",
                                          (time.time(), self.token))
                    if cursor.rowcount == 0:
                        self.lost = True
                        return
                except sqlite3.Error:
                    continue  # busy: the next beat tries again, long before the lease goes stale
        finally:
            conn.close()

    def check(self, conn: sqlite3.Connection) -> None:
        """Inside a write transaction: RunError unless this process still holds the lease."""
        row = conn.execute("SELECT token FROM lease WHERE id = 1").fetchone()
        if self.lost or row is None or row[0] != self.token:
            self.lost = True
            raise RunError(f"run {self.path} was taken over by another process (this one's heartbeat was "
                           "missed); stopping without writing")

    def release(self, conn: sqlite3.Connection | None) -> None:
        """Stop the heartbeat and delete the lease row if it is still ours. Idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if conn is not None:
            try:
                conn.execute("DELETE FROM lease WHERE id = 1 AND token = ?", (self.token,))
            except sqlite3.Error:
                pass  # a stale row is taken over by the next process
