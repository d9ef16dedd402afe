"""One training run per workdir: an exclusive lock on ``<workdir>/run.lock`` while it trains.

The lock is ``flock`` on the open file, so the kernel releases it when the process ends, however
it ends: a run killed with -9 leaves the file but not the lock, and the next run takes it over
(saying whose it was). The file records who holds it, for the refusal message. On a multi-process
run process 0 takes it for all.
"""
from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import logging
import os
import socket

from lm.fileio import new_file_mode

LOCK_FILE = "run.lock"
log = logging.getLogger(__name__)


class WorkdirInUse(RuntimeError):
    """Another run is training in this workdir."""


@contextlib.contextmanager
def workdir_lock(workdir: str):
    """Holds ``workdir``'s run lock for the ``with`` block; WorkdirInUse if another run has it."""
    path = os.path.join(workdir, LOCK_FILE)
    # stream: the lock is the open file itself, held for the whole run
    fd = os.open(path, os.O_RDWR | os.O_CREAT, new_file_mode())
    try:
        _acquire(fd, workdir)
    except BaseException:
        os.close(fd)
        raise
    try:
        previous = _holder(fd)
        if previous:
            log.warning("%s: taking over the lock file of a run that was killed (%s)", workdir,
                        previous)
        _record_holder(fd)
        yield
    finally:
        os.ftruncate(fd, 0)  # a run that ends, even by an exception, leaves no holder behind
        os.close(fd)  # and closing releases the lock


def _acquire(fd: int, workdir: str) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd) or "holder unknown"
        raise WorkdirInUse(f"{workdir} is in use by another training run ({holder}); wait for it "
                           f"to end, or use another --workdir") from None


def _holder(fd: int) -> str:
    """Who wrote the lock file: 'pid N on HOST since TIME', or '' when it is empty."""
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 4096)
    try:
        who = json.loads(raw) if raw.strip() else {}
    except ValueError:
        return raw.decode(errors="replace").strip()
    return f"pid {who.get('pid')} on {who.get('host')} since {who.get('since')}" if who else ""


def _record_holder(fd: int) -> None:
    who = {"pid": os.getpid(), "host": socket.gethostname(),
           "since": datetime.datetime.now().isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(who).encode(), 0)
