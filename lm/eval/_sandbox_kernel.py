"""Kernel-enforced limits for the sandbox child: a seccomp filter and a Landlock ruleset.

Both are unprivileged Linux features that hold even when the program defeats the in-process audit
hook (see lm/eval/sandbox.py): the kernel refuses the system calls, whatever Python or native code
asks for them.

* seccomp: no new processes (fork, vfork, clone without CLONE_THREAD), no tracing or reading of
  other processes' memory, no sockets other than AF_UNIX, no connect/bind, no signals to other
  processes, no mounts, namespaces, device nodes, io_uring, bpf or kernel keyrings;
* Landlock: writes only under the run's working directory (and /dev/null), reads only under the
  Python installation, the system library folders and a few named files, execution of the Python
  interpreter only, no TCP bind/connect, and (ABI 6+) no signals or abstract unix sockets to
  processes outside the sandbox.

They are installed by a short first stage (``python -I -S -c STAGE``, this module's code passed by
the parent) that then executes the child proper (lm/eval/_sandbox_child.py): ctypes, which
installing them takes, must never be loaded where the program runs, because its types (reachable
through ``object.__subclasses__()`` even after the module is gone) read any memory without an
audit event. So execve stays allowed by the filter; Landlock limits it to the interpreter, which
the audit hook refuses to start anyway. The parent imports this module to learn what the machine
supports.
"""
import ctypes
import marshal
import os
import stat
import struct
import sys

STAGE_NAME = "_lm_sandbox_kernel_stage"
# argv: STAGE, this module's code, the config of confine(), the command to execute once confined;
# that command gets the report of confine() as its last argument. Code, config and report travel
# as marshal data in hex (json would cost more than the rest of this stage, in re's import).
STAGE = ("import marshal, sys; exec(marshal.loads(bytes.fromhex(sys.argv[1])),"
         f" {{'__name__': {STAGE_NAME!r}}})")
# Read access under Landlock besides the Python installation: the system's libraries and tools,
# and a few files programs read through the C library or the standard library.
SYSTEM_READABLE = (
    "/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin",
    "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime", "/etc/timezone",
    "/etc/mime.types", "/etc/passwd", "/etc/group", "/etc/nsswitch.conf", "/etc/os-release",
    "/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom",
    "/proc/self", "/proc/cpuinfo", "/proc/meminfo", "/proc/stat", "/sys/devices/system/cpu",
)

PR_SET_NO_NEW_PRIVS = 38
PR_GET_SECCOMP = 21


class KernelLayerUnavailable(Exception):
    """The kernel or the machine does not support one of the layers; the message says why."""


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _fail(what: str) -> KernelLayerUnavailable:
    return KernelLayerUnavailable(f"{what}: {os.strerror(ctypes.get_errno())}")


# ----------------------------------------------------------------------------- seccomp

# x86_64 only: syscall numbers differ per architecture and only these were checked
# (asm/unistd_64.h); elsewhere the filter is reported unavailable rather than guessed.
_AUDIT_ARCH_X86_64 = 0xC000003E
_X32_SYSCALL_BIT = 0x40000000
_SYS_SECCOMP = 317
_SYS = {
    "socket": 41, "connect": 42, "sendto": 44, "sendmsg": 46, "bind": 49, "clone": 56, "fork": 57,
    "vfork": 58, "execve": 59, "kill": 62, "ptrace": 101, "syslog": 103, "rt_sigqueueinfo": 129,
    "mknod": 133, "pivot_root": 155, "acct": 163, "chroot": 161, "mount": 165, "umount2": 166,
    "swapon": 167, "swapoff": 168, "reboot": 169, "iopl": 172, "ioperm": 173, "init_module": 175,
    "delete_module": 176, "quotactl": 179, "tkill": 200, "tgkill": 234, "kexec_load": 246,
    "add_key": 248, "request_key": 249, "keyctl": 250, "mknodat": 259, "unshare": 272,
    "rt_tgsigqueueinfo": 297, "perf_event_open": 298, "name_to_handle_at": 303,
    "open_by_handle_at": 304, "sendmmsg": 307, "setns": 308, "process_vm_readv": 310,
    "process_vm_writev": 311, "finit_module": 313, "kexec_file_load": 320, "bpf": 321,
    "execveat": 322, "userfaultfd": 323, "pidfd_send_signal": 424, "io_uring_setup": 425,
    "io_uring_enter": 426, "io_uring_register": 427, "open_tree": 428, "move_mount": 429,
    "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "clone3": 435,
    "pidfd_getfd": 438, "mount_setattr": 442,
}
# Refused outright with EPERM. (execve is left to Landlock, see above.)
_DENIED = (
    "fork", "vfork",                                                        # new processes
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd",      # other processes
    "pidfd_send_signal", "tkill",
    "connect", "bind", "sendmsg", "sendmmsg",                               # network
    "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "open_tree", "move_mount",
    "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",            # filesystem layout
    "mknod", "mknodat", "open_by_handle_at", "name_to_handle_at",           # device nodes, handles
    "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter",
    "io_uring_register", "add_key", "request_key", "keyctl", "kexec_load", "kexec_file_load",
    "init_module", "finit_module", "delete_module", "reboot", "swapon", "swapoff", "acct",
    "quotactl", "syslog", "iopl", "ioperm",                                 # kernel facilities
)
_CLONE_THREAD = 0x00010000
_AF_UNIX = 1
_EPERM, _ENOSYS = 1, 38

_BPF_LD_W_ABS, _BPF_JEQ, _BPF_JSET, _BPF_JGE, _BPF_RET = 0x20, 0x15, 0x45, 0x35, 0x06
_RET_ALLOW, _RET_KILL_PROCESS, _RET_ERRNO = 0x7FFF0000, 0x80000000, 0x00050000
_NR, _ARCH = 0, 4


def _arg_low(index: int) -> int:
    """Offset of the low 32 bits of a system call argument in struct seccomp_data."""
    return 16 + 8 * index


def _load(offset):
    return (_BPF_LD_W_ABS, 0, 0, offset)


def _ret(value):
    return (_BPF_RET, 0, 0, value)


def _when_syscall(name: str, block: list) -> list:
    """``block`` runs for system call ``name`` (it must end in returns); others skip past it."""
    return [(_BPF_JEQ, 0, len(block), _SYS[name])] + block


def _allow_if_arg_equals(index: int, value: int) -> list:
    return [_load(_arg_low(index)), (_BPF_JEQ, 0, 1, value), _ret(_RET_ALLOW), _ret(_RET_ERRNO | _EPERM)]


def seccomp_program(own_pid: int) -> list:
    """The filter as (code, jt, jf, k) instructions."""
    program = [_load(_ARCH), (_BPF_JEQ, 1, 0, _AUDIT_ARCH_X86_64), _ret(_RET_KILL_PROCESS),
               _load(_NR), (_BPF_JGE, 0, 1, _X32_SYSCALL_BIT), _ret(_RET_KILL_PROCESS)]
    for name in _DENIED:
        program += _when_syscall(name, [_ret(_RET_ERRNO | _EPERM)])
    # glibc starts threads with clone3 and falls back to clone on ENOSYS, whose flags can be seen.
    program += _when_syscall("clone3", [_ret(_RET_ERRNO | _ENOSYS)])
    program += _when_syscall("clone", [_load(_arg_low(0)), (_BPF_JSET, 0, 1, _CLONE_THREAD),
                                       _ret(_RET_ALLOW), _ret(_RET_ERRNO | _EPERM)])
    program += _when_syscall("socket", _allow_if_arg_equals(0, _AF_UNIX))
    # send() is sendto() without an address; an address could name a socket outside the sandbox.
    program += _when_syscall("sendto", [_load(_arg_low(4)), (_BPF_JEQ, 0, 3, 0), _load(_arg_low(4) + 4),
                                        (_BPF_JEQ, 0, 1, 0), _ret(_RET_ALLOW), _ret(_RET_ERRNO | _EPERM)])
    for name in ("kill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo"):  # own process only
        program += _when_syscall(name, _allow_if_arg_equals(0, own_pid))
    return program + [_ret(_RET_ALLOW)]


def _linux_x86_64() -> bool:
    return sys.platform == "linux" and os.uname().machine == "x86_64"


def seccomp_unavailable_reason() -> str:
    """Why this machine cannot take the filter, or "" when it can."""
    if not _linux_x86_64():
        return f"the seccomp filter is written for Linux x86_64, not {sys.platform} {os.uname().machine}"
    if _libc().prctl(PR_GET_SECCOMP, 0, 0, 0, 0) < 0:
        return f"seccomp: {os.strerror(ctypes.get_errno())}"
    return ""


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte),
                ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def install_seccomp_filter() -> None:
    """Installs the filter on every thread of this process (and so on all it starts)."""
    reason = seccomp_unavailable_reason()
    if reason:
        raise KernelLayerUnavailable(reason)
    libc = _libc()
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise _fail("prctl(PR_SET_NO_NEW_PRIVS)")
    program = seccomp_program(os.getpid())
    filters = (_SockFilter * len(program))(*[_SockFilter(*instruction) for instruction in program])
    fprog = _SockFprog(len(program), filters)
    set_mode_filter, flag_tsync = 1, 1
    if libc.syscall(_SYS_SECCOMP, set_mode_filter, flag_tsync, ctypes.byref(fprog)) != 0:
        raise _fail("seccomp(SECCOMP_SET_MODE_FILTER)")


# ----------------------------------------------------------------------------- Landlock

_SYS_LANDLOCK_CREATE_RULESET, _SYS_LANDLOCK_ADD_RULE, _SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1

_FS_EXECUTE, _FS_WRITE_FILE, _FS_READ_FILE, _FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_FS_ALL_V1 = (1 << 13) - 1  # execute ... make_sym
_FS_REFER, _FS_TRUNCATE, _FS_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1 << 0, 1 << 1
# Rights that apply to a file (rather than a directory), by the ABI that introduced them.
_FILE_RIGHTS = _FS_EXECUTE | _FS_WRITE_FILE | _FS_READ_FILE | _FS_TRUNCATE | _FS_IOCTL_DEV


def landlock_abi() -> int:
    """The Landlock ABI version the kernel offers, 0 when it offers none."""
    if not _linux_x86_64():
        return 0  # the syscall numbers below are the x86_64 (and generic) ones
    abi = _libc().syscall(_SYS_LANDLOCK_CREATE_RULESET, None, 0, _CREATE_RULESET_VERSION)
    return max(abi, 0)


def _handled_fs_rights(abi: int) -> int:
    rights = _FS_ALL_V1
    if abi >= 2:
        rights |= _FS_REFER
    if abi >= 3:
        rights |= _FS_TRUNCATE
    if abi >= 5:
        rights |= _FS_IOCTL_DEV
    return rights


def _ruleset_attr(abi: int) -> bytes:
    """struct landlock_ruleset_attr, cut to the fields this ABI knows (the kernel checks the size)."""
    fields = [_handled_fs_rights(abi)]
    if abi >= 4:
        fields.append(_NET_BIND_TCP | _NET_CONNECT_TCP)  # handled, never granted: no TCP at all
    if abi >= 6:
        fields.append(_SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL)
    return struct.pack(f"={len(fields)}Q", *fields)


def _add_path_rule(libc, ruleset_fd: int, path: str, rights: int) -> None:
    """Grants ``rights`` beneath ``path``; a path that does not exist is skipped."""
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            rights &= _FILE_RIGHTS
        rule = ctypes.create_string_buffer(struct.pack("=Qi", rights, fd))  # packed in the uapi
        if libc.syscall(_SYS_LANDLOCK_ADD_RULE, ruleset_fd, _RULE_PATH_BENEATH, rule, 0) != 0:
            raise _fail(f"landlock_add_rule({path})")
    finally:
        os.close(fd)


def install_landlock(workdir: str, readable: list, writable_files: list, executables: list) -> int:
    """Restricts this thread (and all it starts or executes) to: everything under ``workdir``;
    reading under ``readable``; reading and writing ``writable_files``; executing ``executables``.
    Returns the ABI."""
    abi = landlock_abi()
    if abi < 1:
        raise KernelLayerUnavailable("Landlock: not offered by this kernel")
    handled = _handled_fs_rights(abi)
    libc = _libc()
    attr = ctypes.create_string_buffer(_ruleset_attr(abi))
    ruleset_fd = libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, attr, len(attr.raw), 0)
    if ruleset_fd < 0:
        raise _fail("landlock_create_ruleset")
    try:
        for path in readable:
            _add_path_rule(libc, ruleset_fd, path, _FS_READ_FILE | _FS_READ_DIR)
        for path in executables:
            _add_path_rule(libc, ruleset_fd, path, _FS_READ_FILE | _FS_EXECUTE)
        for path in writable_files:
            _add_path_rule(libc, ruleset_fd, path, _FS_READ_FILE | _FS_WRITE_FILE | (handled & _FS_TRUNCATE))
        _add_path_rule(libc, ruleset_fd, workdir, handled)
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise _fail("prctl(PR_SET_NO_NEW_PRIVS)")
        if libc.syscall(_SYS_LANDLOCK_RESTRICT_SELF, ruleset_fd, 0) != 0:
            raise _fail("landlock_restrict_self")
    finally:
        os.close(ruleset_fd)
    return abi


def elf_interpreter(path: str) -> str:
    """The dynamic loader a 64-bit little-endian ELF executable names (PT_INTERP), "" for none.
    The kernel opens it for execution too, so Landlock must let it be executed."""
    with open(path, "rb") as f:
        header = f.read(64)
        if len(header) < 64 or header[:4] != b"\x7fELF" or header[4] != 2 or header[5] != 1:
            return ""
        (program_headers,) = struct.unpack_from("<Q", header, 0x20)
        entry_size, entries = struct.unpack_from("<HH", header, 0x36)
        for index in range(entries):
            f.seek(program_headers + index * entry_size)
            kind, _, offset, _, _, size = struct.unpack("<IIQQQQ", f.read(40))
            if kind == 3:  # PT_INTERP
                f.seek(offset)
                return f.read(size).rstrip(b"\0").decode()
    return ""


# ----------------------------------------------------------------------------- the first stage

def confine(config: dict) -> dict:
    """Installs Landlock, then seccomp, as far as the machine allows; says what was applied."""
    applied, unapplied = [], []
    try:
        abi = install_landlock(config["workdir"], config["readable"], config["writable_files"],
                               config["executables"])
        applied.append(f"landlock-abi{abi}")
    except (KernelLayerUnavailable, OSError) as error:
        unapplied.append(f"landlock: {error}")
    try:
        install_seccomp_filter()
        applied.append("seccomp")
    except (KernelLayerUnavailable, OSError) as error:
        unapplied.append(f"seccomp: {error}")
    return {"applied": applied, "unapplied": unapplied}


if __name__ == STAGE_NAME:
    _report = marshal.dumps(confine(marshal.loads(bytes.fromhex(sys.argv[2])))).hex()
    os.execv(sys.argv[3], sys.argv[3:] + [_report])
