"""Run untrusted generated Python in a constrained child process.

``run_program(source, limits)`` runs the program in a fresh temporary directory, in a child
Python (``python -I -B`` running lm/eval/_sandbox_child.py) that leads a new process group, and
SIGKILLs the whole group at the end; docs/sandbox.md describes the design and its limits.

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
import fcntl
import functools
import json
import logging
import marshal
import os
import secrets
import selectors
import shutil
import signal
import site
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time

from lm.eval import _sandbox_child, _sandbox_kernel

PASSED = "passed"
FAILED = "failed"
TIMED_OUT = "timed out"
ERROR = "error"

OS_ISOLATION_MODES = ("auto", "require", "off")

_HERE = os.path.dirname(os.path.abspath(__file__))
_CHILD_SOURCE = os.path.join(_HERE, "_sandbox_child.py")
_KERNEL_SOURCE = os.path.join(_HERE, "_sandbox_kernel.py")
_STDOUT = "stdout.txt"
_STDERR = "stderr.txt"
_WORK = "work"
_TAIL_CHARS = 2000
_CHANNEL_LIMIT = 1 << 20  # the program can write junk into the channel; read no more than this

log = logging.getLogger(__name__)


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
        start = time.monotonic()
        pid, timed_out, returncode, channel = _run_child(root, work, source, nonce, limits, isolation)
        elapsed = time.monotonic() - start
        status, reason, applied = _outcome(channel, nonce, timed_out, returncode, limits, isolation)
        return Result(status=status, reason=reason, stdout=_tail(os.path.join(root, _STDOUT)),
                      stderr=_tail(os.path.join(root, _STDERR)), elapsed_s=elapsed, pid=pid,
                      workdir=work, isolation=applied)


def _child_stdin(source: str, work: str, nonce: str, channel_fd: int, limits: Limits,
                 isolation: _Isolation) -> bytes:
    """What the child reads from stdin: the child's code for the launcher, then the setup. The
    nonce travels only here, never in argv, the environment or a file."""
    child_code = _compiled(_CHILD_SOURCE)
    setup = json.dumps({
        "source": source, "workdir": work, "limits": dataclasses.asdict(limits), "nonce": nonce,
        "channel_fd": channel_fd, "namespaces": bool(isolation.command_prefix), "outer_uid": os.getuid(),
    }).encode()
    return b"%d\n" % len(child_code) + child_code + setup


def _child_command(work: str, isolation: _Isolation) -> list[str]:
    """unshare (namespaces), then the first stage (Landlock, seccomp), then the child proper."""
    command = [*isolation.command_prefix]
    if isolation.kernel_layers:
        config = {"workdir": work, "readable": _readable_paths(), "writable_files": ["/dev/null"],
                  "executables": _interpreter_files()}
        command += [sys.executable, "-I", "-S", "-B", "-c", _sandbox_kernel.STAGE,
                    _compiled(_KERNEL_SOURCE).hex(), marshal.dumps(config).hex()]
    return command + [sys.executable, "-I", "-B", "-c", _sandbox_child.LAUNCHER]


@functools.lru_cache(maxsize=None)
def _readable_paths() -> list[str]:
    """What Landlock lets the child read: the system's libraries and the Python installation that
    ``python -I`` sees (standard library, site-packages, the virtual environment)."""
    places = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
              *sysconfig.get_paths().values(), *site.getsitepackages()]
    python = [path for place in places if place for path in (place, os.path.realpath(place))]
    return sorted(set(_sandbox_kernel.SYSTEM_READABLE) | set(python))


@functools.lru_cache(maxsize=None)
def _interpreter_files() -> list[str]:
    """What Landlock lets the child execute: the interpreter and its dynamic loader, so the first
    stage can start the child and nothing else can be started."""
    interpreter = os.path.realpath(sys.executable)
    loader = _sandbox_kernel.elf_interpreter(interpreter)
    return [interpreter] + ([os.path.realpath(loader)] if loader else [])


@functools.lru_cache(maxsize=None)
def _compiled(path: str) -> bytes:
    """A module's code, compiled once per process, for children that would otherwise compile it
    on every run (they cannot import the lm package and may find no .pyc)."""
    with open(path, encoding="utf-8") as f:
        return marshal.dumps(compile(f.read(), path, "exec"))


def _child_env(work: str) -> dict[str, str]:
    """A minimal environment: no proxies, no credentials, single-threaded numeric libraries."""
    env = {"PATH": "/usr/bin:/bin", "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8",
           "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0"}
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = "1"
    return env


def _run_child(root: str, work: str, source: str, nonce: str, limits: Limits,
               isolation: _Isolation) -> tuple[int, bool, int | None, str]:
    """Starts the child as the leader of a new process group, holding the result channel's write
    end; writes its stdin, waits up to the time limit, kills the group, reads the channel."""
    read_end, write_end = os.pipe()
    stdin = _child_stdin(source, work, nonce, write_end, limits, isolation)
    try:
        # stream: the child's stdout and stderr, written by the child while it runs
        with open(os.path.join(root, _STDOUT), "wb") as out, open(os.path.join(root, _STDERR), "wb") as err:
            proc = subprocess.Popen(
                _child_command(work, isolation), cwd=work,
                env=_child_env(work), stdin=subprocess.PIPE, stdout=out, stderr=err,
                pass_fds=(write_end,), start_new_session=True, close_fds=True)
            os.close(write_end)
            write_end = -1
            try:
                timed_out = not _feed_and_wait(proc, stdin, limits.timeout_s)
            finally:
                _end(proc, in_namespaces=bool(isolation.command_prefix))
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


def _end(proc: subprocess.Popen, in_namespaces: bool) -> None:
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
    while size < _CHANNEL_LIMIT:
        try:
            chunk = os.read(read_end, 1 << 16)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks).decode("utf-8", errors="replace")


def kill_process_group(pgid: int) -> None:
    """SIGKILLs every process of the group; a group that is already gone is fine."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _outcome(channel: str, nonce: str, timed_out: bool, returncode: int | None, limits: Limits,
             isolation: _Isolation) -> tuple[str, str, tuple[str, ...]]:
    """Status, reason and the kernel layers the child reported (on its first line, written
    before the program ran)."""
    lines = channel.splitlines()
    applied = tuple(lines[0].split(" ", 1)[1].split(",")) if lines and lines[0].startswith("layers ") else ()
    applied = tuple(layer for layer in applied if layer)
    _warn_about_unapplied(lines, limits)
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


# ----------------------------------------------------------------------------- the OS layer

@dataclasses.dataclass(frozen=True)
class _Isolation:
    """How runs are isolated by the kernel on this machine."""
    command_prefix: tuple[str, ...] = ()  # unshare and its flags, () without namespaces
    kernel_layers: bool = False           # a first stage installs Landlock and seccomp
    expected: tuple[str, ...] = ()        # layer names the child should report in force
    missing: tuple[str, ...] = ()         # one line per missing layer: what and why


_NO_ISOLATION = _Isolation()
# New user (mapped to nobody, so the program holds no capability even there), pid (the program is
# pid 1; killing it ends everything it started), network (only a loopback that is down), IPC and
# mount (for a /proc that shows only the namespace) namespaces. util-linux before 2.38 lacks
# --map-user; mapping to root in the namespace is the fallback.
_NAMESPACE_FLAGS = (
    ("--user", "--map-user=65534", "--map-group=65534"),
    ("--user", "--map-root-user"),
)
_COMMON_NAMESPACE_FLAGS = ("--pid", "--fork", "--kill-child", "--net", "--ipc", "--mount-proc")
_CONSEQUENCES = {
    "namespaces": "the network, other processes' /proc entries and processes that outlive the run "
                  "are kept from the program by the guard, seccomp and Landlock alone",
    "seccomp": "a program that gets past the in-process guard can start processes and open sockets",
    "landlock": "a program that gets past the in-process guard can write wherever the user can",
}

_detected: _Isolation | None = None
_detect_lock = threading.Lock()
_warned: set[str] = set()


def _isolation(mode: str) -> _Isolation:
    """The layers to use for ``mode``; warns once (auto) or raises (require) about missing ones."""
    if mode == "off":
        return _NO_ISOLATION
    isolation = _detect_once()
    if isolation.missing:
        if mode == "require":
            raise SandboxUnavailable("OS isolation for sandboxed programs is not available: "
                                     + "; ".join(isolation.missing))
        for line in isolation.missing:
            _warn_once(line)
    return isolation


def _detect_once() -> _Isolation:
    global _detected
    with _detect_lock:
        if _detected is None:
            _detected = _detect()
        return _detected


def _detect() -> _Isolation:
    prefix, namespace_problem = _namespace_prefix()
    seccomp_problem = _sandbox_kernel.seccomp_unavailable_reason()
    landlock_problem = "" if _sandbox_kernel.landlock_abi() >= 1 else "Landlock is not offered by this kernel"
    problems = {"namespaces": namespace_problem, "landlock": landlock_problem, "seccomp": seccomp_problem}
    missing = tuple(f"no {layer} ({problem}): {_CONSEQUENCES[layer]}"
                    for layer, problem in problems.items() if problem)
    expected = tuple(layer for layer, problem in problems.items() if not problem)
    return _Isolation(command_prefix=prefix, kernel_layers=not (seccomp_problem and landlock_problem),
                      expected=expected, missing=missing)


def _namespace_prefix() -> tuple[tuple[str, ...], str]:
    """The unshare command that works here, or () and why none does."""
    unshare = shutil.which("unshare", path="/usr/bin:/bin:/usr/sbin:/sbin")
    if unshare is None:
        return (), "util-linux unshare is not installed"
    problem = ""
    for flags in _NAMESPACE_FLAGS:
        prefix = (unshare, *flags, *_COMMON_NAMESPACE_FLAGS, "--")
        problem = _namespace_problem(prefix)
        if not problem:
            return prefix, ""
    return (), problem


def _namespace_problem(prefix: tuple[str, ...]) -> str:
    """Why the program would not run as pid 1 inside ``prefix``, "" when it would."""
    probe = [*prefix, sys.executable, "-I", "-S", "-c", "import os; assert os.getpid() == 1"]
    try:
        done = subprocess.run(probe, stdin=subprocess.DEVNULL, capture_output=True, timeout=30,
                              env=_child_env("/"))
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"{' '.join(prefix[:1])}: {error}"
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else f"unshare exited with code {done.returncode}"
    return ""


def _warn_about_unapplied(lines: list[str], limits: Limits) -> None:
    """The child could not apply a layer that detection found (written before the program ran)."""
    if limits.os_isolation == "off":
        return
    for line in lines[1:]:
        if not line.startswith("unapplied "):
            break  # the program's own output starts here
        layer, _, why = line[len("unapplied "):].partition(": ")
        _warn_once(f"no {layer} ({why}): {_CONSEQUENCES.get(layer, 'a layer the machine offers is missing')}")


def _warn_once(line: str) -> None:
    with _detect_lock:
        if line in _warned:
            return
        _warned.add(line)
    log.warning("lm.eval.sandbox runs untrusted programs with %s. Limits(os_isolation='off') runs "
                "without the OS layer and without this warning; 'require' refuses to run.", line)
