"""The sandbox's guard: the in-process refusals, in force in every ``os_isolation`` mode.

lm/eval/_sandbox_child.py runs this module's code (compiled by the parent and sent on stdin after
the child's own) in a namespace of its own, a plain dict named by the child's ``GUARD_MODULE_NAME``
that no ``sys.modules`` entry holds, and calls two of its functions before the program starts:

* ``replace_unaudited_primitives()`` replaces the functions that act without raising an audit
  event (``_posixsubprocess.fork_exec``, ``os.mkfifo``/``mknod``/``chroot``,
  ``signal.pidfd_send_signal``, named shared memory and semaphores) by refusals;
* ``make_audit_hook(workdir, own_pid)`` builds the audit hook the child installs.

Refused operations raise ``SandboxViolation`` (a ``PermissionError``), refused imports
``ImportError``.

The guard cannot be rebound by the program: the hook is a closure that only the child's
interpreter holds (no module, global or object the program can reach refers to it), built over
immutable values, and neither it nor the functions it calls look up a global or builtin name, keep
mutable state, or call code the program can replace. A program that rebinds this module's or the
child's globals (through ``sys._getframe().f_back``, say), the builtins or ``os.path`` changes
nothing the hook does; tests/test_sandbox.py checks the bytecode for it. The replacements hold no
reference to the functions they replace, so changing them gives none of those back.
"""
import os
import sys


class SandboxViolation(PermissionError):
    """Raised inside the child when the program attempts a refused operation."""


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


def replace_unaudited_primitives() -> None:
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

