"""The sandbox's child process, seen from the parent: starting it, feeding it, ending it.

lm/eval/sandbox.py builds the command and what goes on stdin; ``run_child`` starts the command as
the leader of a new process group with a minimal environment, holding the write end of the result
channel (a pipe), writes its stdin, waits up to the time limit, SIGKILLs what is left and returns
once all of it is gone, then reads the channel without waiting for writers that may still hold it.
"""
from __future__ import annotations

import fcntl
import logging
import os
import selectors
import signal
import subprocess
import time
from typing import Callable

CHANNEL_LIMIT = 1 << 20  # the program can write junk into the channel; read no more than this

log = logging.getLogger("lm.eval.sandbox")  # the public module's logger: one name to configure


def child_env(work: str) -> dict[str, str]:
    """A minimal environment: no proxies, no credentials, single-threaded numeric libraries."""
    env = {"PATH": "/usr/bin:/bin", "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8",
           "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0"}
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = "1"
    return env


def run_child(command: list[str], stdin_for: Callable[[int], bytes], work: str,
              outputs: tuple[str, str], timeout_s: float,
              in_namespaces: bool) -> tuple[int, bool, int | None, str]:
    """Starts ``command`` in ``work`` as the leader of a new process group, holding the result
    channel's write end; writes ``stdin_for(the channel's descriptor)`` to its stdin, sends its
    stdout and stderr to the files ``outputs``, waits up to ``timeout_s``, kills the group, reads
    the channel. Returns (pid, whether it timed out, its exit status, the channel's text)."""
    read_end, write_end = os.pipe()
    stdin = stdin_for(write_end)
    stdout_path, stderr_path = outputs
    try:
        # stream: the child's stdout and stderr, written by the child while it runs
        with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
            proc = subprocess.Popen(
                command, cwd=work, env=child_env(work), stdin=subprocess.PIPE, stdout=out, stderr=err,
                pass_fds=(write_end,), start_new_session=True, close_fds=True)
            os.close(write_end)
            write_end = -1
            try:
                timed_out = not _feed_and_wait(proc, stdin, timeout_s)
            finally:
                end(proc, in_namespaces=in_namespaces)
        return proc.pid, timed_out, proc.returncode, _drain(read_end)
    finally:
        for fd in (read_end, write_end):
            if fd >= 0:
                os.close(fd)


def _feed_and_wait(proc: subprocess.Popen, data: bytes, timeout_s: float) -> bool:
    """Writes ``data`` to the child's stdin and waits for it to exit; False if it is still running
    after ``timeout_s``. A pidfd wakes this up the moment the child exits (Popen.wait polls with
    sleeps that double up to 50 ms, which would be most of a short run's time)."""
    try:
        exited = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # not Linux 5.3+
        try:
            proc.communicate(data, timeout=timeout_s)
            return True
        except subprocess.TimeoutExpired:
            return False
    deadline, pending = time.monotonic() + timeout_s, memoryview(data)
    stdin = proc.stdin.fileno()
    os.set_blocking(stdin, False)
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(exited, selectors.EVENT_READ)
            selector.register(stdin, selectors.EVENT_WRITE)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                for key, _ in selector.select(remaining):
                    if key.fd == exited:
                        return True
                    try:
                        pending = pending[os.write(stdin, pending[:1 << 16]):]
                    except BrokenPipeError:  # the child is gone or will not read
                        pending = pending[:0]
                    if not pending:
                        selector.unregister(stdin)
                        proc.stdin.close()
    finally:
        os.close(exited)
        if not proc.stdin.closed:
            proc.stdin.close()


def end(proc: subprocess.Popen, in_namespaces: bool) -> None:
    """Kills what is left of the run and returns once all of it is gone."""
    if in_namespaces and proc.poll() is None:
        # Killed first, the namespace's init is reaped at once by unshare (our child), which then
        # exits. Killed together with unshare it would be left to the machine's init, which may
        # take a second or more to reap it.
        for pid in _children(proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _exits_within(proc, 5.0)
    kill_process_group(proc.pid)
    proc.wait()
    _wait_until_gone(proc.pid)


def kill_process_group(pgid: int) -> None:
    """SIGKILLs every process of the group; a group that is already gone is fine."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as f:
            return [int(child) for child in f.read().split()]
    except OSError:
        return []


def _exits_within(proc: subprocess.Popen, timeout_s: float) -> bool:
    try:
        exited = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        try:
            proc.wait(timeout=timeout_s)
            return True
        except subprocess.TimeoutExpired:
            return False
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(exited, selectors.EVENT_READ)
            return bool(selector.select(timeout_s))
    finally:
        os.close(exited)


def _wait_until_gone(pgid: int, limit_s: float = 10.0) -> None:
    """Waits for the last process of the group to be reaped. Under unshare the program is not our
    child: killed, it is torn down with its pid namespace and reaped by init a moment later."""
    deadline, pause = time.monotonic() + limit_s, 0.001
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        except PermissionError:
            pass
        time.sleep(pause)
        pause = min(pause * 2, 0.05)
    log.warning("process group %d of a sandboxed program is still alive %g s after SIGKILL", pgid, limit_s)


def _drain(read_end: int) -> str:
    """What the child wrote to the channel, without waiting for writers that may still hold it."""
    fcntl.fcntl(read_end, fcntl.F_SETFL, fcntl.fcntl(read_end, fcntl.F_GETFL) | os.O_NONBLOCK)
    chunks, size = [], 0
    while size < CHANNEL_LIMIT:
        try:
            chunk = os.read(read_end, 1 << 16)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks).decode("utf-8", errors="replace")
