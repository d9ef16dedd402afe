"""Run untrusted generated Python in a constrained child process.

``run_program(source, limits)`` writes the program to a fresh temporary directory and runs it there
with ``python -I -B`` in a new session (its own process group), then kills that whole group and
removes the directory. The child sets resource limits and installs an audit hook
(``sys.addaudithook``) before it executes the program.

What is enforced:

* wall-clock time: the parent kills the process group (SIGKILL) at ``timeout_s``; RLIMIT_CPU is a
  second stop;
* memory: RLIMIT_AS (address space), so large allocations raise ``MemoryError``;
* processes: the audit hook refuses ``os.fork``, ``os.forkpty``, ``os.posix_spawn``, ``os.exec*``,
  ``os.system``, ``subprocess.Popen``, and ``_posixsubprocess.fork_exec`` (which has no audit
  event) is replaced; RLIMIT_NPROC is set as well, but the kernel ignores it for root, and it counts
  every task of the user, so it is only a second stop for non-root users; anything left in the
  process group is killed at the end;
* signals: ``os.kill``, ``os.killpg`` and ``signal.pthread_kill`` are refused (as root the program
  could otherwise signal any process on the machine);
* network: socket creation for families other than AF_UNIX, ``connect``, ``bind``, ``sendto``,
  ``sendmsg`` and name resolution are refused; no proxy variables reach the child's environment;
* files: opening for writing, creating, removing, renaming, linking, chmod/chown/utime/truncate are
  refused outside the temporary directory (``/dev/null`` excepted), after resolving symbolic links
  and ``dir_fd`` arguments; opening a directory outside it is refused too, so that no outside
  ``dir_fd`` can be obtained. Opening a device file for writing (``/dev/null`` excepted) or a
  block device at all is refused, inside the directory too (root can ``os.mknod`` one there).
  Reading regular files anywhere is allowed (imports need it). RLIMIT_FSIZE caps the size of any
  file written, including the captured stdout/stderr; the number of files is not capped;
* ``resource.setrlimit``/``prlimit`` (root could raise its own hard limits), ``ctypes`` symbol
  look-ups, raw-address access and library loading (``ctypes`` itself still imports, numpy needs
  it), and ``gc`` object enumeration are refused.

What is not: this is an in-process Python guard, meant to stop generated code that is wrong or
careless (infinite loops, fork bombs, memory hogs, ``rm -rf``), not a security boundary against a
program written to escape. Such a program can reach interpreter internals (for example through
``ctypes`` memory access or C extension modules that do their own system calls) and undo the guard,
or forge a "passed" result. Reads of any file the user can read are allowed and can be printed.
Running as a non-root user makes RLIMIT_NPROC and file permissions apply as well. For
adversarial code, run this inside a container, VM or gVisor/nsjail with its own pid, network and
mount namespaces and a cgroup ``pids.max``.
"""
import dataclasses
import json
import math
import os
import resource
import signal
import stat
import subprocess
import sys
import tempfile
import time

PASSED = "passed"
FAILED = "failed"
TIMED_OUT = "timed out"
ERROR = "error"

_PROGRAM = "program.py"
_CONFIG = "config.json"
_RESULT = "result.json"
_STDOUT = "stdout.txt"
_STDERR = "stderr.txt"
_WORK = "work"
_TAIL_CHARS = 2000
_REASON_CHARS = 300


@dataclasses.dataclass(frozen=True)
class Limits:
    """Resource limits of one run."""
    timeout_s: float = 3.0
    memory_bytes: int = 2 * 2**30
    file_bytes: int = 64 * 2**20
    open_files: int = 256
    extra_processes: int = 32  # RLIMIT_NPROC headroom above the user's current task count


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

    @property
    def passed(self) -> bool:
        return self.status == PASSED


# ----------------------------------------------------------------------------- parent side

def run_program(source: str, limits: Limits = Limits()) -> Result:
    """Runs ``source`` in a sandboxed child process and reports how it ended."""
    with tempfile.TemporaryDirectory(prefix="lm-sandbox-", ignore_cleanup_errors=True) as root:
        root = os.path.realpath(root)
        work = os.path.join(root, _WORK)
        os.mkdir(work)
        _write_inputs(root, source, limits)
        start = time.monotonic()
        pid, timed_out, returncode = _run_child(root, work, limits)
        elapsed = time.monotonic() - start
        status, reason = _outcome(root, timed_out, returncode, limits)
        return Result(status=status, reason=reason, stdout=_tail(os.path.join(root, _STDOUT)),
                      stderr=_tail(os.path.join(root, _STDERR)), elapsed_s=elapsed, pid=pid,
                      workdir=work)


def _write_inputs(root: str, source: str, limits: Limits) -> None:
    # Imported here: the child runs this file as a script (python -I) and cannot import lm.
    from lm.fileio import write_atomically
    write_atomically(os.path.join(root, _PROGRAM), source)
    write_atomically(os.path.join(root, _CONFIG), json.dumps(dataclasses.asdict(limits)))


def _child_env(work: str) -> dict[str, str]:
    """A minimal environment: no proxies, no credentials, single-threaded numeric libraries."""
    env = {"PATH": "/usr/bin:/bin", "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8",
           "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0"}
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = "1"
    return env


def _run_child(root: str, work: str, limits: Limits) -> tuple[int, bool, int | None]:
    """Starts the child in its own session, waits up to the time limit, kills its process group."""
    # stream: the child's stdout and stderr, written by the child while it runs
    with open(os.path.join(root, _STDOUT), "wb") as out, open(os.path.join(root, _STDERR), "wb") as err:
        proc = subprocess.Popen([sys.executable, "-I", "-B", os.path.abspath(__file__), root],
                                cwd=work, env=_child_env(work), stdin=subprocess.DEVNULL,
                                stdout=out, stderr=err, start_new_session=True, close_fds=True)
        timed_out = False
        try:
            proc.wait(timeout=limits.timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            kill_process_group(proc.pid)
            proc.wait()
    return proc.pid, timed_out, proc.returncode


def kill_process_group(pgid: int) -> None:
    """SIGKILLs every process of the group; a group that is already gone is fine."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _outcome(root: str, timed_out: bool, returncode: int | None, limits: Limits) -> tuple[str, str]:
    if timed_out:
        return TIMED_OUT, f"exceeded the {limits.timeout_s:g} s time limit"
    try:
        with open(os.path.join(root, _RESULT), encoding="utf-8") as f:
            result = json.load(f)
        return result["status"], result.get("reason", "")
    except (OSError, ValueError, KeyError):
        return ERROR, _exit_reason(returncode)


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


# ----------------------------------------------------------------------------- child side

class SandboxViolation(PermissionError):
    """Raised inside the child when the program attempts a refused operation."""


_BLOCKED_EVENTS = frozenset({
    "os.fork", "os.forkpty", "os.posix_spawn", "os.exec", "os.spawn", "os.system", "os.startfile",
    "subprocess.Popen",
    "os.kill", "os.killpg", "signal.pthread_kill",
    "socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg",
    "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex",
    "socket.gethostbyaddr", "socket.getnameinfo",
    "resource.setrlimit", "resource.prlimit",
    "ctypes.dlsym", "ctypes.dlsym/handle", "ctypes.cdata", "ctypes.cdata/buffer",
    "gc.get_objects", "gc.get_referrers", "gc.get_referents",
})
# Events whose path arguments (by position) name a file that is modified; True: follow symlinks.
_PATH_EVENTS = {
    "os.remove": ((0, 1, False),),
    "os.rmdir": ((0, 1, False),),
    "os.mkdir": ((0, 2, False),),
    "os.rename": ((0, 2, False), (1, 3, False)),
    "os.link": ((0, 2, True), (1, 3, False)),
    "os.symlink": ((1, 2, False),),
    "os.chmod": ((0, 2, True),),
    "os.chown": ((0, 3, True),),
    "os.utime": ((0, 3, True),),
    "os.truncate": ((0, None, True),),
    "os.setxattr": ((0, None, True),),
    "os.removexattr": ((0, None, True),),
    "os.chflags": ((0, None, True),),
    "os.lchflags": ((0, None, False),),
    "os.lchmod": ((0, None, False),),
    "shutil.rmtree": ((0, 1, False),),
}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_ALLOWED_WRITE_PATHS = frozenset({"/dev/null"})


def _resolve(path, dir_fd, follow: bool) -> str:
    """Absolute real path of a path argument (str, bytes, PathLike or fd), honouring ``dir_fd``."""
    if isinstance(path, int):
        return os.readlink(f"/proc/self/fd/{path}")
    path = os.fsdecode(os.fspath(path))
    if not os.path.isabs(path):
        base = os.getcwd() if dir_fd in (None, -1) else os.readlink(f"/proc/self/fd/{dir_fd}")
        path = os.path.join(base, path)
    if follow:
        return os.path.realpath(path)
    head, name = os.path.split(os.path.normpath(path))
    return os.path.join(os.path.realpath(head), name)


def _file_mode(path: str) -> int:
    try:
        return os.stat(path).st_mode
    except OSError:
        return 0


def _is_device(path: str) -> bool:
    mode = _file_mode(path)
    return stat.S_ISCHR(mode) or stat.S_ISBLK(mode)


def _is_block_device(path: str) -> bool:
    return stat.S_ISBLK(_file_mode(path))


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root + os.sep)


def _make_audit_hook(root: str, bootstrap_modules: frozenset):
    """The child's audit hook: refuses process, signal, network and outside-file operations."""

    def refuse(event, detail=""):
        raise SandboxViolation(f"sandbox: {event} {detail}".strip())

    def check_path(event, args, index, dir_index, follow):
        if index >= len(args) or args[index] is None:
            return
        dir_fd = args[dir_index] if dir_index is not None and dir_index < len(args) else None
        try:
            path = _resolve(args[index], dir_fd, follow)
        except (OSError, TypeError, ValueError):
            refuse(event, "on an unresolvable path")
        if not _inside(path, root):
            refuse(event, f"outside the sandbox: {path}")

    def check_open(args):
        path, mode, flags = (tuple(args) + (None, None, 0))[:3]
        if path is None or isinstance(path, int):
            return  # an already open descriptor
        writes = bool((flags or 0) & _WRITE_FLAGS) or any(c in (mode or "") for c in "wax+")
        resolved = _resolve(path, None, True)
        if writes and resolved in _ALLOWED_WRITE_PATHS:
            return
        if _is_device(resolved) and (writes or _is_block_device(resolved)):
            refuse("open of a device", resolved)  # e.g. one made with os.mknod in the sandbox
        if _inside(resolved, root):
            return
        if writes:
            refuse("open for writing", f"outside the sandbox: {resolved}")
        if os.path.isdir(resolved):
            refuse("open of a directory", f"outside the sandbox: {resolved}")

    def hook(event, args):
        if event in _BLOCKED_EVENTS:
            refuse(event)
        elif event == "open":
            check_open(args)
        elif event in _PATH_EVENTS:
            for index, dir_index, follow in _PATH_EVENTS[event]:
                check_path(event, args, index, dir_index, follow)
        elif event == "socket.__new__" and len(args) > 1 and args[1] not in (-1, _AF_UNIX):
            refuse("socket creation", f"(family {args[1]})")
        elif event == "ctypes.dlopen" and args and args[0] is not None:
            refuse(event, str(args[0]))
        elif event == "import" and args and args[0] in bootstrap_modules:
            refuse("re-import of", args[0])

    return hook


_AF_UNIX = 1


def _user_task_count(uid: int) -> int:
    """Tasks (processes and threads) of ``uid``: what RLIMIT_NPROC counts."""
    count = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status", encoding="ascii", errors="replace") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            if int(fields["Uid"].split()[0]) == uid:
                count += int(fields["Threads"])
        except (OSError, KeyError, ValueError):
            continue
    return count


def _set_limit(kind: int, value: int) -> None:
    _, hard = resource.getrlimit(kind)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(kind, (value, hard))


def _apply_limits(limits: dict) -> None:
    _set_limit(resource.RLIMIT_AS, int(limits["memory_bytes"]))
    _set_limit(resource.RLIMIT_FSIZE, int(limits["file_bytes"]))
    _set_limit(resource.RLIMIT_NOFILE, int(limits["open_files"]))
    _set_limit(resource.RLIMIT_CPU, int(math.ceil(limits["timeout_s"])) + 1)
    _set_limit(resource.RLIMIT_CORE, 0)
    if os.getuid() != 0:  # the kernel does not apply RLIMIT_NPROC to root
        _set_limit(resource.RLIMIT_NPROC, _user_task_count(os.getuid()) + int(limits["extra_processes"]))


def _disable_fork_exec():
    """Replaces ``_posixsubprocess.fork_exec``, which spawns without an audit event."""
    import _posixsubprocess

    def fork_exec(*args, **kwargs):
        raise SandboxViolation("sandbox: _posixsubprocess.fork_exec")

    _posixsubprocess.fork_exec = fork_exec
    return frozenset({"_posixsubprocess"})


def _write_result(result_file, status: str, reason: str = "") -> None:
    result_file.write(json.dumps({"status": status, "reason": reason[:_REASON_CHARS]}))
    result_file.flush()


def _describe(error: BaseException) -> str:
    """``Type: message (line N)`` with the last line of the program on the traceback."""
    text = f"{type(error).__name__}: {error}".rstrip(": ")
    line, tb = None, error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == _PROGRAM:
            line = tb.tb_lineno
        tb = tb.tb_next
    return f"{text} (line {line})" if line is not None else text


def _child_main(root: str) -> None:
    """Entry point of the child: limits, audit hook, then the program in fresh globals."""
    with open(os.path.join(root, _CONFIG), encoding="utf-8") as f:
        limits = json.load(f)
    with open(os.path.join(root, _PROGRAM), encoding="utf-8") as f:
        source = f.read()
    # stream: opened before the limits and the audit hook, written once the program has ended
    result_file = open(os.path.join(root, _RESULT), "w", encoding="utf-8")
    _apply_limits(limits)
    sys.addaudithook(_make_audit_hook(os.path.join(root, _WORK), _disable_fork_exec()))
    try:
        exec(compile(source, _PROGRAM, "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
    except BaseException as error:  # SystemExit included: a program that exits has not passed
        _write_result(result_file, FAILED, _describe(error))
    else:
        _write_result(result_file, PASSED)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(0)


if __name__ == "__main__":
    _child_main(sys.argv[1])
