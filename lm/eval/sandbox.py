"""Run untrusted generated Python in a constrained child process.

``run_program(source, limits)`` runs the program in a fresh temporary directory, in a child
Python (``python -I -B`` running lm/eval/_sandbox_child.py) that leads a new process group, and
SIGKILLs the whole group at the end; docs/sandbox.md describes the design and its limits. This
module sets up each run and judges how it ended; the rest is in lm/eval/_sandbox_isolation.py
(which kernel layers the machine offers), lm/eval/_sandbox_process.py (starting, waiting for and
ending the child), lm/eval/_sandbox_kernel.py (Landlock and seccomp, installed by a first stage)
and, for the child, lm/eval/_sandbox_child.py (limits, the program, its verdict) with
lm/eval/_sandbox_guard.py (the audit hook and the replaced primitives).

What is enforced:

* in every mode, by this process: wall-clock time (``timeout_s``); a minimal environment (no
  proxies, credentials or tokens of the parent); the verdict: a run counts as passed only when the
  result channel holds ``passed <nonce>`` with this run's secret nonce, which the child writes
  after ``exec`` of the whole program returned, from a record no frame, module or object of the
  program refers to; writing to any descriptor, printing, ``sys.exit``/``os._exit`` part-way or
  closing descriptors cannot produce it;
* in every mode, by the child before the program runs: resource limits (address space, so large
  allocations raise ``MemoryError``; file size, the captured output included; descriptors; CPU
  time; processes where the kernel applies RLIMIT_NPROC, which is not for real root) and an audit
  hook (``sys.addaudithook``) that refuses starting processes (``os.fork``, ``posix_spawn``,
  ``exec*``, ``system``, ``subprocess``; ``_posixsubprocess.fork_exec``, which raises no event, is
  replaced), signals to other processes, sockets other than AF_UNIX, ``connect``/``bind``/
  ``sendto``, name resolution, writes, creations, removals and attribute changes outside the
  working directory (symbolic links and ``dir_fd`` resolved), symbolic links, FIFOs and device
  nodes, opening a directory outside it, devices other than null/zero/full/random/urandom,
  ``/proc`` of other processes and process memory, raising limits, ``gc`` object traversal,
  hand-made code objects, and modules that act without audit events (ctypes, subinterpreters,
  Tcl, SQLite, shared memory, CPython's test modules). The hook is a closure the program cannot
  reach or rebind, and the program runs in a fresh ``__main__`` module;
* with ``Limits.os_isolation`` "auto" (the default: what the machine offers, missing parts
  reported once with ``logging.warning``) or "require" (``SandboxUnavailable`` when a part is
  missing), by the kernel, holding even against a program that defeats the hook: user, pid,
  network, IPC and mount namespaces (util-linux ``unshare``), so the program is pid 1 of its own
  namespace, sees no other process, has no network but a loopback, and nothing it starts
  outlives the run; Landlock: writes only in the working directory and /dev/null, reads only from
  the Python installation, system library folders and a few named files, execution of the
  interpreter alone, no TCP, no signals out; a seccomp filter (Linux x86_64): no fork, vfork or
  clone of a process, no ptrace or other processes' memory, no socket but AF_UNIX, no connect or
  bind, no signal to another process, no mount, namespace, device node, bpf, io_uring or keyring
  calls. ``Result.isolation`` names the layers that were in force.

What is not: the program shares its interpreter with the hook and with its tests, so a program
that corrupts interpreter memory (hand-made ``.pyc``/``marshal`` data, a CPython bug) can disable
the hook and forge the verdict, and tests can be fooled from Python (objects equal to anything,
rebound names, tracing); the kernel layers still hold then, but with ``os_isolation="off"`` or
without them only the hook stands between such a program and the machine, which then also
misses what fresh copies of builtin modules restore (``os.mkfifo`` through
``_imp.create_builtin``). The program keeps the user's uid: it can read what the user can,
less what Landlock hides. Kernel exploits and CPU side channels are out of scope.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import marshal
import os
import secrets
import signal
import sys
import tempfile
import time

from lm.eval import _sandbox_child, _sandbox_isolation, _sandbox_kernel, _sandbox_process
from lm.eval._sandbox_process import kill_process_group as kill_process_group  # public API

PASSED = "passed"
FAILED = "failed"
TIMED_OUT = "timed out"
ERROR = "error"

OS_ISOLATION_MODES = ("auto", "require", "off")

_HERE = os.path.dirname(os.path.abspath(__file__))
_CHILD_SOURCE = os.path.join(_HERE, "_sandbox_child.py")
_GUARD_SOURCE = os.path.join(_HERE, "_sandbox_guard.py")
_KERNEL_SOURCE = os.path.join(_HERE, "_sandbox_kernel.py")
_STDOUT = "stdout.txt"
_STDERR = "stderr.txt"
_WORK = "work"
_TAIL_CHARS = 2000


@dataclasses.dataclass(frozen=True)
class Limits:
    """Resource limits of one run.

    ``os_isolation``: "auto" uses the kernel layers the machine offers and warns once about the
    others; "require" raises SandboxUnavailable when one is missing; "off" uses none of them (the
    in-process guard and resource limits only).
    """
    timeout_s: float = 3.0
    memory_bytes: int = 2 * 2**30
    file_bytes: int = 64 * 2**20
    open_files: int = 256
    extra_processes: int = 32  # RLIMIT_NPROC headroom (threads count too) where the kernel applies it
    os_isolation: str = "auto"

    def __post_init__(self):
        if self.os_isolation not in OS_ISOLATION_MODES:
            raise ValueError(f"os_isolation must be one of {OS_ISOLATION_MODES}, not {self.os_isolation!r}")


@dataclasses.dataclass(frozen=True)
class Result:
    """Outcome of one run: ``status`` is PASSED, FAILED, TIMED_OUT or ERROR."""
    status: str
    reason: str
    stdout: str
    stderr: str
    elapsed_s: float
    pid: int  # also the process group id of the run
    workdir: str
    isolation: tuple[str, ...] = ()  # kernel layers in force: namespaces, landlock-abiN, seccomp

    @property
    def passed(self) -> bool:
        return self.status == PASSED


class SandboxUnavailable(RuntimeError):
    """``os_isolation="require"`` on a machine that lacks one of the kernel layers."""


# ----------------------------------------------------------------------------- running a program

def run_program(source: str, limits: Limits = Limits()) -> Result:
    """Runs ``source`` in a sandboxed child process and reports how it ended."""
    isolation = _isolation(limits.os_isolation)
    with tempfile.TemporaryDirectory(prefix="lm-sandbox-", ignore_cleanup_errors=True) as root:
        root = os.path.realpath(root)
        work = os.path.join(root, _WORK)
        os.mkdir(work)
        nonce = secrets.token_hex(16)
        outputs = (os.path.join(root, _STDOUT), os.path.join(root, _STDERR))
        start = time.monotonic()
        pid, timed_out, returncode, channel = _sandbox_process.run_child(
            _child_command(work, isolation),
            lambda channel_fd: _child_stdin(source, work, nonce, channel_fd, limits, isolation),
            work, outputs, limits.timeout_s, in_namespaces=bool(isolation.command_prefix))
        elapsed = time.monotonic() - start
        status, reason, applied = _outcome(channel, nonce, timed_out, returncode, limits, isolation)
        return Result(status=status, reason=reason, stdout=_tail(outputs[0]), stderr=_tail(outputs[1]),
                      elapsed_s=elapsed, pid=pid, workdir=work, isolation=applied)


def _isolation(mode: str) -> _sandbox_isolation.Isolation:
    """The layers to use for ``mode``; warns once (auto) or raises (require) about missing ones."""
    if mode == "off":
        return _sandbox_isolation.NO_ISOLATION
    isolation = _sandbox_isolation.detect_once()
    if isolation.missing:
        if mode == "require":
            raise SandboxUnavailable("OS isolation for sandboxed programs is not available: "
                                     + "; ".join(isolation.missing))
        for line in isolation.missing:
            _sandbox_isolation.warn_once(line)
    return isolation


def _child_stdin(source: str, work: str, nonce: str, channel_fd: int, limits: Limits,
                 isolation: _sandbox_isolation.Isolation) -> bytes:
    """What the child reads from stdin: the child's code for the launcher, the guard's code, then
    the setup. The nonce travels only here, never in argv, the environment or a file."""
    child_code, guard_code = _compiled(_CHILD_SOURCE), _compiled(_GUARD_SOURCE)
    setup = json.dumps({
        "source": source, "workdir": work, "limits": dataclasses.asdict(limits), "nonce": nonce,
        "channel_fd": channel_fd, "namespaces": bool(isolation.command_prefix), "outer_uid": os.getuid(),
    }).encode()
    return b"%d\n" % len(child_code) + child_code + b"%d\n" % len(guard_code) + guard_code + setup


def _child_command(work: str, isolation: _sandbox_isolation.Isolation) -> list[str]:
    """unshare (namespaces), then the first stage (Landlock, seccomp), then the child proper."""
    command = [*isolation.command_prefix]
    if isolation.kernel_layers:
        config = _sandbox_isolation.landlock_config(work)
        command += [sys.executable, "-I", "-S", "-B", "-c", _sandbox_kernel.STAGE,
                    _compiled(_KERNEL_SOURCE).hex(), marshal.dumps(config).hex()]
    return command + [sys.executable, "-I", "-B", "-c", _sandbox_child.LAUNCHER]


@functools.lru_cache(maxsize=None)
def _compiled(path: str) -> bytes:
    """A module's code, compiled once per process, for children that would otherwise compile it
    on every run (they cannot import the lm package and may find no .pyc)."""
    with open(path, encoding="utf-8") as f:
        return marshal.dumps(compile(f.read(), path, "exec"))


# ----------------------------------------------------------------------------- the verdict

def _outcome(channel: str, nonce: str, timed_out: bool, returncode: int | None, limits: Limits,
             isolation: _sandbox_isolation.Isolation) -> tuple[str, str, tuple[str, ...]]:
    """Status, reason and the kernel layers the child reported (on its first line, written
    before the program ran)."""
    lines = channel.splitlines()
    applied = tuple(lines[0].split(" ", 1)[1].split(",")) if lines and lines[0].startswith("layers ") else ()
    applied = tuple(layer for layer in applied if layer)
    _sandbox_isolation.warn_about_unapplied(lines, limits.os_isolation)
    missing = [layer for layer in isolation.expected if not any(a.startswith(layer) for a in applied)]
    if limits.os_isolation == "require" and missing:
        return ERROR, f"OS isolation required but not in force: {', '.join(missing)}", applied
    if f"passed {nonce}\n" in channel:
        return PASSED, "", applied
    if timed_out:
        return TIMED_OUT, f"exceeded the {limits.timeout_s:g} s time limit", applied
    failures = [line[len("failed "):] for line in lines if line.startswith("failed ")]
    if failures:
        return FAILED, failures[-1], applied
    return ERROR, _exit_reason(returncode), applied


def _exit_reason(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with code {returncode} before the program finished"


def _tail(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - _TAIL_CHARS))
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
