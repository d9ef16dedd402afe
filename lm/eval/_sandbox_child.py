"""The sandboxed child: limits, kernel layers, the guard, the program, and its verdict.

lm/eval/sandbox.py starts ``python -I -B -c LAUNCHER`` (inside ``unshare`` when namespaces are
available, executed by the first stage of lm/eval/_sandbox_kernel.py once it installed Landlock
and seccomp) and writes to its stdin this module's code, then the code of the guard
(lm/eval/_sandbox_guard.py), each compiled once by the parent so no child compiles them, and then
the setup as one JSON object: ``source``, ``workdir``, ``limits``, ``channel_fd``, ``nonce``,
``namespaces``, ``outer_uid``. The launcher runs this code as a module named
``CHILD_MODULE_NAME``. Before the program runs, in order:

1. the guard's code and the setup are read and stdin replaced by /dev/null, so nothing can read
   them again; the guard's code runs in a namespace of its own named ``GUARD_MODULE_NAME``;
2. resource limits (address space, file size, descriptors, CPU time, processes);
3. the guard replaces the process primitives that raise no audit event by refusals;
4. the guard's audit hook is installed; the first line on the result channel names the layers in
   force;
5. the program runs in a fresh ``__main__`` module; neither this module nor the guard is in any
   ``sys.modules`` entry (the launcher and this module ``exec`` their code into plain dicts).

The guard cannot be rebound by the program: lm/eval/_sandbox_guard.py says why. A program that
rebinds this module's globals (through ``sys._getframe().f_back``, say) changes nothing the hook
does, and here only what happens after its verdict is settled.

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
GUARD_MODULE_NAME = "_lm_sandbox_guard"
# Reads this module's code from stdin (a line with its size, then marshal data) and runs it; the
# rest of stdin is the guard's code, in the same form, and the setup, read by _read_setup. Its
# module globals hold nothing of the setup.
LAUNCHER = ("import marshal, sys; "
            "exec(marshal.loads(sys.stdin.buffer.read(int(sys.stdin.buffer.readline()))),"
            f" {{'__name__': {CHILD_MODULE_NAME!r}}})")
_REASON_CHARS = 300


# ----------------------------------------------------------------------------- setup and limits

def _read_setup() -> tuple:
    """The guard's code and the parent's setup from stdin (after the code the launcher read), then
    stdin reads /dev/null."""
    stdin = sys.stdin.buffer
    guard_code = marshal.loads(stdin.read(int(stdin.readline())))
    setup = stdin.read()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    return guard_code, json.loads(setup)


def _load_guard(code) -> dict:
    """Runs the guard's code in a namespace of its own, which no ``sys.modules`` entry holds."""
    guard = {"__name__": GUARD_MODULE_NAME}
    exec(code, guard)
    return guard


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
    guard_code, setup = _read_setup()
    guard = _load_guard(guard_code)
    workdir, channel = setup["workdir"], setup["channel_fd"]
    in_namespaces = bool(setup["namespaces"]) and os.getpid() == 1
    _apply_limits(setup["limits"], setup["outer_uid"], in_namespaces)
    kernel_applied, unapplied = _kernel_layers_report()
    applied = (["namespaces"] if in_namespaces else []) + kernel_applied
    guard["replace_unaudited_primitives"]()
    notes = "".join(f"unapplied {note}\n" for note in unapplied)
    os.write(channel, ("layers " + ",".join(applied) + "\n" + notes).encode())
    try:
        code = compile(setup["source"], PROGRAM_NAME, "exec")
    except (SyntaxError, ValueError) as error:  # a program that does not compile has failed
        _report_failure(channel, error)
        _finish(1)
    namespace = _fresh_main(setup["source"])
    record = [("passed " + setup["nonce"] + "\n").encode()]
    sys.addaudithook(guard["make_audit_hook"](workdir, os.getpid()))
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
