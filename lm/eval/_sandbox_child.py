"""The sandboxed child: limits, kernel layers, the audit hook, the program, and its verdict.

lm/eval/sandbox.py starts ``python -I -B -c LAUNCHER`` (inside ``unshare`` when namespaces are
available, executed by the first stage of lm/eval/_sandbox_kernel.py once it installed Landlock
and seccomp) and writes to its stdin this module's code (compiled once by the parent, so no child
compiles it) and then the setup as one JSON object: ``source``, ``workdir``, ``limits``,
``channel_fd``, ``nonce``, ``namespaces``, ``outer_uid``. The launcher runs the code as a module
named ``CHILD_MODULE_NAME``. Before the program runs, in order:

1. the setup is read and stdin replaced by /dev/null, so nothing can read it again;
2. resource limits (address space, file size, descriptors, CPU time, processes);
3. the process primitives that raise no audit event are replaced by refusals;
4. the audit hook is installed; the first line on the result channel names the layers in force;
5. the program runs in a fresh ``__main__`` module; this module is in no ``sys.modules`` entry.

The guard cannot be rebound by the program: the hook is a closure that only this process's
interpreter holds (no module, global or object the program can reach refers to it), built over
immutable values, and neither it nor the functions it calls look up a global or builtin name, keep
mutable state, or call code the program can replace. A program that rebinds this module's
globals (through ``sys._getframe().f_back``, say), the builtins or ``os.path`` changes nothing the
hook does; tests/test_sandbox.py checks the bytecode for it.

The verdict cannot be forged through the channel: the parent counts a run as passed only when the
channel holds ``passed <nonce>``, with a per-run nonce that arrives on stdin. The record is built
before the program starts and handed straight to a ``functools.partial`` that only a C-level
iteration holds (``map`` inside ``list.extend``): no frame's locals, module or object the program
can reach refers to it, and process memory, where it could still be found, cannot be read (the
guard refuses ``/proc/self/mem`` and ``gc`` traversal, and ctypes is never loaded here). That
iteration writes it only after ``exec`` of the program returned; a program that raises, calls
``sys.exit`` or ``os._exit``, or writes to any descriptor, ends without it.
"""
import functools
import json
import marshal
import math
import operator
import os
import resource
import sys

PROGRAM_NAME = "program.py"
CHILD_MODULE_NAME = "_lm_sandbox_child"
# Reads this module's code from stdin (a line with its size, then marshal data) and runs it; the
# rest of stdin is the setup, read by _read_setup. Its module globals hold nothing of the setup.
LAUNCHER = ("import marshal, sys; "
            "exec(marshal.loads(sys.stdin.buffer.read(int(sys.stdin.buffer.readline()))),"
            f" {{'__name__': {CHILD_MODULE_NAME!r}}})")
_REASON_CHARS = 300


class SandboxViolation(PermissionError):
    """Raised inside the child when the program attempts a refused operation."""


# ----------------------------------------------------------------------------- setup and limits

def _read_setup() -> dict:
    """The parent's setup from stdin (after the code the launcher read), then stdin reads /dev/null."""
    setup = sys.stdin.buffer.read()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    return json.loads(setup)


def _user_task_count(uid: int) -> int:
    """Tasks (processes and threads) of ``uid``: what RLIMIT_NPROC counts outside a namespace."""
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


def _apply_limits(limits: dict, outer_uid: int, in_namespaces: bool) -> None:
    _set_limit(resource.RLIMIT_AS, int(limits["memory_bytes"]))
    _set_limit(resource.RLIMIT_FSIZE, int(limits["file_bytes"]))
    _set_limit(resource.RLIMIT_NOFILE, int(limits["open_files"]))
    _set_limit(resource.RLIMIT_CPU, int(math.ceil(limits["timeout_s"])) + 1)
    _set_limit(resource.RLIMIT_CORE, 0)
    # The kernel ignores RLIMIT_NPROC for real root, whatever the namespace. In a user namespace it
    # counts only the namespace's tasks (unshare and this process), elsewhere every task of the user.
    if outer_uid != 0:
        baseline = 2 if in_namespaces else _user_task_count(os.getuid())
        _set_limit(resource.RLIMIT_NPROC, baseline + int(limits["extra_processes"]))


# ----------------------------------------------------------------------------- kernel layers

def _kernel_layers_report() -> tuple:
    """(layers applied, "layer: why not" for the others) as the first stage passed them: the last
    argument, after LAUNCHER. No first stage, no argument."""
    if len(sys.argv) < 2:
        return [], []
    report = marshal.loads(bytes.fromhex(sys.argv[-1]))
    return report["applied"], report["unapplied"]


# ----------------------------------------------------------------------------- unaudited primitives

def _refuse_process_start(*args, **kwargs):
    raise SandboxViolation("sandbox: _posixsubprocess.fork_exec (starting a process) is refused")


def _refuse_special_file(*args, **kwargs):
    raise SandboxViolation("sandbox: os.mknod and os.mkfifo (device nodes and FIFOs) are refused")


def _refuse_chroot(*args, **kwargs):
    raise SandboxViolation("sandbox: os.chroot is refused")


def _refuse_pidfd_signal(*args, **kwargs):
    raise SandboxViolation("sandbox: signal.pidfd_send_signal (signals to other processes) is refused")


def _refuse_shared_memory(*args, **kwargs):
    raise SandboxViolation("sandbox: named shared memory and semaphores (files in /dev/shm) are refused")


def _replace_unaudited_primitives() -> None:
    """Replaces the functions that act without raising an audit event. The replacements hold no
    reference to the originals; a fresh copy of these extension modules is an import the hook
    refuses, so the modules stay importable with the replacements in them."""
    import _multiprocessing
    import _posixshmem
    import _posixsubprocess
    import _signal
    import posix
    import signal
    _posixsubprocess.fork_exec = _refuse_process_start
    if "subprocess" in sys.modules:  # it binds fork_exec at import
        sys.modules["subprocess"]._fork_exec = _refuse_process_start
    _posixshmem.shm_open = _posixshmem.shm_unlink = _refuse_shared_memory
    _multiprocessing.SemLock = _multiprocessing.sem_unlink = _refuse_shared_memory
    for module in (posix, os):
        module.mknod = module.mkfifo = _refuse_special_file
        module.chroot = _refuse_chroot
    for module in (_signal, signal):
        module.pidfd_send_signal = _refuse_pidfd_signal


# ----------------------------------------------------------------------------- the audit hook

# Events refused outright.
_REFUSED_EVENTS = frozenset({
    "os.fork", "os.forkpty", "os.posix_spawn", "os.exec", "os.spawn", "os.system", "os.startfile",
    "subprocess.Popen", "pty.spawn",
    "os.kill", "os.killpg", "signal.pthread_kill",
    "socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg", "socket.sethostname",
    "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex",
    "socket.gethostbyaddr", "socket.getnameinfo",
    "resource.setrlimit", "resource.prlimit",
    "ctypes.dlopen", "ctypes.dlsym", "ctypes.dlsym/handle", "ctypes.cdata", "ctypes.cdata/buffer",
    "ctypes.call_function", "ctypes.string_at", "ctypes.wstring_at", "ctypes.addressof",
    "gc.get_objects", "gc.get_referrers", "gc.get_referents",
    "sys.addaudithook",
    "os.symlink",            # links could be swapped between the hook's check and the kernel's use
})
# Modules that must not be loaded (again: the first three hold the replaced primitives; ctypes's
# types would stay reachable after a refused use and read memory without an event): process
# and shared-memory primitives without audit events, memory access, a second interpreter (audit
# hooks are per interpreter), C libraries that write files or start processes on their own (Tcl,
# SQLite, readline, syslog, NIS, OSS audio), a reader of password hashes, and CPython's test modules.
_REFUSED_IMPORTS = frozenset({
    "_posixsubprocess", "_posixshmem", "_multiprocessing", "ctypes", "_ctypes", "_ctypes_test",
    "_xxsubinterpreters", "_xxinterpchannels", "_tkinter", "_sqlite3", "readline", "spwd", "syslog",
    "nis", "ossaudiodev",
    "_testcapi", "_testinternalcapi", "_testbuffer", "_testclinic", "_testimportmultiple",
    "_testmultiphase", "_testsinglephase", "_xxtestfuzz",
})
# Events that modify a file: (path argument, its dir_fd argument or -1, whether a symbolic link
# as the last component is followed).
_PATH_EVENTS = (
    ("os.remove", ((0, 1, False),)),
    ("os.rmdir", ((0, 1, False),)),
    ("os.mkdir", ((0, 2, False),)),
    ("os.rename", ((0, 2, False), (1, 3, False))),
    ("os.link", ((0, 2, True), (1, 3, False))),
    ("os.chmod", ((0, 2, True),)),
    ("os.chown", ((0, 3, True),)),
    ("os.utime", ((0, 3, True),)),
    ("os.truncate", ((0, -1, True),)),
    ("os.setxattr", ((0, -1, True),)),
    ("os.removexattr", ((0, -1, True),)),
    ("os.chflags", ((0, -1, True),)),
    ("os.lchflags", ((0, -1, False),)),
    ("os.lchmod", ((0, -1, False),)),
    ("os.chdir", ((0, -1, True),)),  # a working directory outside would let relative paths out
)
# (shutil.rmtree's event is not among them: it passes the path as given, a pathlib.Path say, and
# every system call it makes raises an event of its own with the path converted.)
# The rest of this section is the guard. Its functions use only their arguments, locals and
# literal constants: no global or builtin name, no closure but the hook's own, no nested function,
# no mutable value. What they need travels in ``guard``, a tuple make_audit_hook builds once:
# (workdir, own_pid, write_flags, type_, lstat, readlink, getcwd, os_errors,
#  path_text, descriptor_path, real_path, climbs_out)
# File types are spelled as numbers (S_IFMT 0o170000, S_IFLNK 0o120000, S_IFDIR 0o040000,
# S_IFCHR 0o020000, S_IFBLK 0o060000) and len(args) as args.__len__().


def _path_text(path, guard):
    """A str or bytes path as text, None for anything else. The os functions' events carry the
    path converted; an event that carries a PathLike object (io.FileIO's) is refused, as its
    __fspath__ could answer the hook differently from the system call, which asked it first."""
    (workdir, own_pid, write_flags, type_, lstat, readlink, getcwd, os_errors,
     path_text, descriptor_path, real_path, climbs_out) = guard
    kind = type_(path)
    if kind is type_(""):
        return path
    if kind is type_(b""):
        return path.decode("utf-8", "surrogateescape")
    return None


def _descriptor_path(fd, guard):
    """The path an open descriptor names, "" for a pipe, socket or other file without one."""
    (workdir, own_pid, write_flags, type_, lstat, readlink, getcwd, os_errors,
     path_text, descriptor_path, real_path, climbs_out) = guard
    try:
        target = readlink("/proc/self/fd/%d" % fd)
    except os_errors:
        return ""
    return target if target.startswith("/") else ""


def _climbs_out(relative):
    """Whether ``..`` in a relative path rises above its starting folder at some point."""
    depth = 0
    while relative:
        name, _, relative = relative.partition("/")
        if name == "..":
            depth -= 1
            if depth < 0:
                return True
        elif name and name != ".":
            depth += 1
    return False


def _real_path(path, follow_last, guard):
    """The real path of absolute ``path``, resolving symbolic links component by component as the
    kernel does; components that do not exist are taken as written. "" when it cannot be resolved
    (a link loop, or a /proc link to a pipe, socket or namespace), "\0another process" when it
    passes through /proc/<pid> of another process."""
    (workdir, own_pid, write_flags, type_, lstat, readlink, getcwd, os_errors,
     path_text, descriptor_path, real_path, climbs_out) = guard
    resolved, pending, links = "", path, 0
    while pending:
        name, _, pending = pending.partition("/")
        if name == "" or name == ".":
            continue
        if name == "..":
            resolved = resolved[:resolved.rfind("/")] if resolved else ""
            continue
        if resolved == "/proc" and name.isdigit() and name != own_pid:
            return "\0another process"
        candidate = resolved + "/" + name
        if not pending and not follow_last:
            resolved = candidate
            continue
        try:
            mode = lstat(candidate).st_mode
        except os_errors:
            resolved = candidate  # does not exist (yet)
            continue
        if mode & 0o170000 != 0o120000:
            resolved = candidate
            continue
        links += 1
        if links > 40:
            return ""
        try:
            target = readlink(candidate)
        except os_errors:
            return ""
        if target.startswith("/"):
            resolved = ""
        elif resolved.startswith("/proc/"):
            return ""  # "pipe:[123]", "socket:[...]", "net:[...]": not a path
        pending = target + "/" + pending if pending else target
    return resolved or "/"


def _open_refusal(args, guard):
    """Why the "open" event (path, mode, flags) is refused, "" when it is allowed."""
    (workdir, own_pid, write_flags, type_, lstat, readlink, getcwd, os_errors,
     path_text, descriptor_path, real_path, climbs_out) = guard
    path, flags = args[0], args[2]
    if type_(path) is type_(0):
        return ""  # an already open descriptor
    text = path_text(path, guard)
    if text is None:
        return "open of a path that is not str or bytes"
    if not text.startswith("/"):
        # The event does not carry os.open's dir_fd: refuse what could leave even the shallowest
        # folder a descriptor can name (the working directory); deeper ones only go less far.
        if climbs_out(text):
            return "open of a relative path that climbs out: " + text
        text = getcwd() + "/" + text
    real = real_path(text, True, guard)
    if real == "":
        return "open of a path that does not name a file"
    if real == "\0another process":
        return "open of /proc of another process"
    if real.startswith("/proc/") and real.rpartition("/")[2] in ("mem", "pagemap", "kcore"):
        return "open of process memory: " + real
    writes = type_(flags) is not type_(0) or flags & write_flags != 0
    try:
        kind = lstat(real).st_mode & 0o170000
    except os_errors:
        kind = 0
    if kind == 0o060000:
        return "open of a block device: " + real
    devices = ("/dev/null",) if writes else ("/dev/null", "/dev/zero", "/dev/full", "/dev/random",
                                             "/dev/urandom")
    if kind == 0o020000 and real not in devices:
        return "open of a device: " + real
    if real == workdir or real.startswith(workdir + "/"):
        return ""
    if writes and real != "/dev/null":
        return "open for writing outside the sandbox: " + real
    if kind == 0o040000:
        return "open of a directory outside the sandbox: " + real  # so no dir_fd points outside
    return ""


def _path_refusal(event, args, specs, guard):
    """Why a file-modifying event is refused: one of its paths is outside the working directory."""
    (workdir, own_pid, write_flags, type_, lstat, readlink, getcwd, os_errors,
     path_text, descriptor_path, real_path, climbs_out) = guard
    for index, dir_index, follow_last in specs:
        if index >= args.__len__() or args[index] is None:
            continue
        path = args[index]
        if type_(path) is type_(0):
            real = descriptor_path(path, guard)
        else:
            text = path_text(path, guard)
            if text is None:
                return event + " needs a str or bytes path"
            if not text.startswith("/"):
                dir_fd = args[dir_index] if 0 <= dir_index < args.__len__() else -1
                if type_(dir_fd) is type_(0) and dir_fd >= 0:
                    text = descriptor_path(dir_fd, guard) + "/" + text
                else:
                    text = getcwd() + "/" + text
            real = real_path(text, follow_last, guard)
        if not real.startswith("/"):
            return event + " on a path that does not name a file"
        if not (real == workdir or real.startswith(workdir + "/")):
            return event + " outside the sandbox: " + real
    return ""


def make_audit_hook(workdir, own_pid):
    """The audit hook for a run whose working directory is ``workdir`` (a real path)."""
    import types
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    guard = (workdir, "%d" % own_pid, write_flags, type, os.lstat, os.readlink, os.getcwd,
             (OSError, ValueError), _path_text, _descriptor_path, _real_path, _climbs_out)
    refused_events, refused_imports, path_events = _REFUSED_EVENTS, _REFUSED_IMPORTS, _PATH_EVENTS
    open_refusal, path_refusal, path_text = _open_refusal, _path_refusal, _path_text
    violation, import_error, caller_frame = SandboxViolation, ImportError, sys._getframe
    # The guard's functions, whose code must stay as written (they are reachable through frames).
    guard_functions = (_path_text, _descriptor_path, _real_path, _climbs_out, _open_refusal, _path_refusal)
    # The one standard-library user of code.replace: it only sets CO_ITERABLE_COROUTINE.
    coroutine_code = types.coroutine.__code__

    def hook(event, args):
        if event in refused_events:
            raise violation("sandbox: " + event + " is refused")
        if event == "open":
            reason = open_refusal(args, guard)
            if reason:
                raise violation("sandbox: " + reason)
        elif event == "import":
            name = path_text(args[0], guard)
            if name is None or name.rpartition(".")[2] in refused_imports:
                raise import_error("sandbox: import of " + (name or "?") + " is refused")
        elif event == "socket.__new__":
            if args[1] != -1 and args[1] != 1:  # AF_UNIX
                raise violation("sandbox: creating a socket other than AF_UNIX is refused")
        elif event == "object.__setattr__":
            if args[1] == "__code__" and args[0] in guard_functions:
                raise violation("sandbox: replacing the code of the sandbox's guard is refused")
        elif event == "code.__new__":
            # Hand-made code objects (wrong constants, names or bytecode) read and write memory.
            if caller_frame(1).f_code is not coroutine_code:
                raise violation("sandbox: code.__new__ and code.replace are refused")
        else:
            for name, specs in path_events:
                if name == event:
                    reason = path_refusal(event, args, specs, guard)
                    if reason:
                        raise violation("sandbox: " + reason)
                    return

    return hook


# ----------------------------------------------------------------------------- the program

def _fresh_main(source: str) -> dict:
    """A new ``__main__`` module for the program (doctest, pickle and ``if __name__`` see it)."""
    import linecache
    import types
    module = types.ModuleType("__main__")
    sys.modules["__main__"] = module
    sys.argv = [PROGRAM_NAME]
    linecache.cache[PROGRAM_NAME] = (len(source), None, source.splitlines(True), PROGRAM_NAME)
    return module.__dict__


def _describe(error: BaseException) -> str:
    """``Type: message (line N)`` with the last line of the program on the traceback."""
    text = f"{type(error).__name__}: {error}".rstrip(": ")
    line, tb = None, error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == PROGRAM_NAME:
            line = tb.tb_lineno
        tb = tb.tb_next
    return f"{text} (line {line})" if line is not None else text


def _report_failure(channel: int, error: BaseException) -> None:
    try:
        reason = _describe(error)
    except BaseException:  # the program's own __str__ can fail
        reason = type(error).__name__
    line = "failed " + reason.replace("\n", " ")[:_REASON_CHARS] + "\n"
    os.write(channel, line.encode("utf-8", "replace"))


def _finish(exit_code: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass
    os._exit(exit_code)


def _prepare() -> tuple:
    """Everything before the program: returns (code, namespace, channel, [pass record])."""
    setup = _read_setup()
    workdir, channel = setup["workdir"], setup["channel_fd"]
    in_namespaces = bool(setup["namespaces"]) and os.getpid() == 1
    _apply_limits(setup["limits"], setup["outer_uid"], in_namespaces)
    kernel_applied, unapplied = _kernel_layers_report()
    applied = (["namespaces"] if in_namespaces else []) + kernel_applied
    _replace_unaudited_primitives()
    notes = "".join(f"unapplied {note}\n" for note in unapplied)
    os.write(channel, ("layers " + ",".join(applied) + "\n" + notes).encode())
    try:
        code = compile(setup["source"], PROGRAM_NAME, "exec")
    except (SyntaxError, ValueError) as error:  # a program that does not compile has failed
        _report_failure(channel, error)
        _finish(1)
    namespace = _fresh_main(setup["source"])
    record = [("passed " + setup["nonce"] + "\n").encode()]
    sys.addaudithook(make_audit_hook(workdir, os.getpid()))
    return code, namespace, channel, record


def _run(code, namespace, channel: int, record: list) -> None:
    """Runs the program and exits; the pass record reaches the channel only if it ran to its end.

    ``record.pop()`` moves the record into a partial held only by the tuple that ``map`` iterates
    inside ``list.extend``: C code, none of it reachable from the program's frames (whose oldest
    caller is this frame, holding the emptied list). The program may rebind this module's globals,
    which only changes what happens after its verdict is settled.
    """
    try:
        [].extend(map(operator.call, (functools.partial(exec, code, namespace),
                                      functools.partial(os.write, channel, record.pop()))))
    except BaseException as error:  # SystemExit included: a program that exits has not passed
        _report_failure(channel, error)
        _finish(1)
    _finish(0)


if __name__ == CHILD_MODULE_NAME:
    _run(*_prepare())
