"""The sandbox stops wrong, runaway and harmful programs and leaves the machine as it was.

Most tests run twice: with the OS layer the machine offers ("auto") and with the in-process guard
alone ("off"), so the guard is known to hold where the kernel layers are missing. Programs under a
comment that starts with "Before:" got out of the previous sandbox (which ran the program as the
sandbox module's own ``__main__``, with the guard's state in module globals); docs/sandbox.md
lists them.
"""
import dis
import os
import socket
import subprocess
import sys
import textwrap
import time
import types
import uuid

import pytest

from lm.eval import _sandbox_guard, _sandbox_isolation, _sandbox_process, sandbox
from tests.helpers import ROOT

MODES = ["auto", "off"]
OS_LAYER_MISSING = _sandbox_isolation.detect_once().missing
needs_os_layer = pytest.mark.skipif(bool(OS_LAYER_MISSING), reason="; ".join(OS_LAYER_MISSING))


def limits(mode="auto", **overrides):
    # generous time limit: the machine may be busy; runs finish in ~0.1 s
    return sandbox.Limits(**{"timeout_s": 10.0, "os_isolation": mode, **overrides})


def run(source, limits=limits()):
    return sandbox.run_program(textwrap.dedent(source), limits)


def group_alive(pgid):
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(params=MODES, ids=["os-layer", "guard-only"])
def mode(request):
    return request.param


# ----------------------------------------------------------------------------- ordinary programs

def test_correct_program_passes_and_workdir_is_removed(mode):
    result = run("""
        import os
        def add(a, b):
            return a + b
        assert add(2, 3) == 5
        with open("scratch.txt", "w") as f:  # writing inside the sandbox is allowed
            f.write("ok")
        os.remove("scratch.txt")
        print(os.getcwd())
    """, limits(mode))
    assert result.status == sandbox.PASSED, result
    assert result.stdout.strip() == result.workdir
    assert not os.path.exists(result.workdir)
    assert not group_alive(result.pid)


def test_wrong_program_fails_with_reason(mode):
    result = run("""
        def add(a, b):
            return a - b
        assert add(2, 3) == 5, "add is wrong"
    """, limits(mode))
    assert result.status == sandbox.FAILED
    assert result.reason == "AssertionError: add is wrong (line 4)"


def test_program_that_does_not_compile_fails_with_reason(mode):
    result = run("def add(a, b)\n    return a + b", limits(mode))
    assert result.status == sandbox.FAILED and result.reason.startswith("SyntaxError"), result


def test_program_runs_as_a_fresh_main_module(mode):
    result = run("""
        import doctest, sys
        assert __name__ == "__main__" and sys.modules["__main__"].__dict__ is globals()
        assert sys.argv == ["program.py"]
        assert not [name for name in globals() if "hook" in name or "guard" in name]
        def square(x):
            '''
            >>> square(3)
            9
            '''
            return x * x
        assert doctest.testmod().attempted == 1
    """, limits(mode))
    assert result.status == sandbox.PASSED, result


def test_common_libraries_work(mode):
    result = run("""
        import asyncio, collections, concurrent.futures, dataclasses, enum, logging, traceback, typing
        import numpy as np
        Point = collections.namedtuple("Point", "x y")
        T = typing.TypeVar("T")
        logging.warning("logging works")
        try:
            1 / 0
        except ZeroDivisionError:
            traceback.print_exc()
        async def five():
            return 5
        assert asyncio.run(five()) == 5
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            assert sum(pool.map(abs, [-1, -2])) == 3
        assert int(np.arange(10).sum()) == 45
        import pathlib, shutil, tempfile
        pathlib.Path("tree/sub").mkdir(parents=True)
        pathlib.Path("tree/sub/file.txt").write_text("inside")
        shutil.rmtree(pathlib.Path("tree"))
        with tempfile.TemporaryDirectory() as folder:
            pathlib.Path(folder, "file.txt").write_text("inside")
    """, limits(mode))
    assert result.status == sandbox.PASSED, result
    assert "ZeroDivisionError" in result.stderr


# ----------------------------------------------------------------------------- limits

def test_infinite_loop_is_stopped_by_time_limit(mode):
    start = time.monotonic()
    result = run("while True: pass", limits(mode, timeout_s=1.0))
    assert result.status == sandbox.TIMED_OUT
    assert time.monotonic() - start < 5
    assert not group_alive(result.pid)


def test_fork_bomb_is_stopped(mode):
    start = time.monotonic()
    result = run("import os\nwhile True: os.fork()", limits(mode, timeout_s=2.0))
    assert result.status == sandbox.FAILED and "os.fork" in result.reason
    assert time.monotonic() - start < 5
    assert not group_alive(result.pid)


def test_persistent_fork_bomb_is_stopped_by_time_limit(mode):
    # Swallows the refusals (and running out of descriptors) and keeps trying every spawning route.
    result = run("""
        import os, subprocess, multiprocessing, pty
        attempts = [os.fork, lambda: os.system("true"), lambda: subprocess.Popen(["true"]),
                    lambda: os.posix_spawn("/bin/true", ["true"], {}), pty.fork,
                    lambda: multiprocessing.get_context("spawn").Process(target=print).start()]
        while True:
            for attempt in attempts:
                try:
                    attempt()
                except OSError:
                    pass
    """, limits(mode, timeout_s=1.0))
    assert result.status == sandbox.TIMED_OUT, result
    assert not group_alive(result.pid)


def test_memory_hog_is_stopped(mode):
    start = time.monotonic()
    result = run("x = bytearray(10 * 1024 ** 3)\nx[-1] = 1", limits(mode))
    assert result.status == sandbox.FAILED and "MemoryError" in result.reason
    assert time.monotonic() - start < 5


# ----------------------------------------------------------------------------- files, network, signals

def test_deleting_outside_the_sandbox_is_blocked(tmp_path, mode):
    sentinel_dir = tmp_path / "keep"
    sentinel_dir.mkdir()
    sentinel = sentinel_dir / "sentinel.txt"
    sentinel.write_text("precious")
    for code in [f"import os\nos.remove({str(sentinel)!r})",
                 f"import os\nos.unlink({str(sentinel)!r})",
                 f"import shutil\nshutil.rmtree({str(sentinel_dir)!r})",
                 f"import os\nos.rename({str(sentinel)!r}, 'stolen.txt')",
                 f"open({str(sentinel)!r}, 'w').write('overwritten')",
                 f"import os\nos.chdir({str(sentinel_dir)!r})\nopen('sentinel.txt', 'a').write('x')",
                 f"import os\nos.symlink({str(sentinel)!r}, 'link')\nopen('link', 'w').write('x')",
                 f"import os\nfd = os.open({str(sentinel_dir)!r}, os.O_RDONLY)\n"
                 f"os.unlink('sentinel.txt', dir_fd=fd)",
                 f"import os, pathlib\nos.remove(pathlib.Path({str(sentinel)!r}))",
                 f"import io, pathlib\nio.FileIO(pathlib.Path({str(sentinel)!r}), 'w')",
                 # Before: os.open's dir_fd is not in the audit event; resolved from a deep working
                 # directory instead, a climb from a shallow dir_fd looked inside and truncated it
                 "import os\nos.makedirs('a/b/c/d/e/f/g/h')\nroot = os.open('.', os.O_RDONLY)\n"
                 "os.chdir('a/b/c/d/e/f/g/h')\n"
                 f"os.open('../../..{str(sentinel)}', os.O_WRONLY | os.O_TRUNC, dir_fd=root)",
                 # Before: os.mkfifo raises no audit event
                 f"import os\nos.mkfifo({str(sentinel_dir / 'fifo')!r})"]:
        result = run(code, limits(mode))
        assert result.status == sandbox.FAILED and "sandbox" in result.reason, (code, result)
    assert sentinel.read_text() == "precious"
    assert os.listdir(sentinel_dir) == ["sentinel.txt"]


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can make device nodes")
def test_device_nodes_made_inside_cannot_be_opened(mode):
    result = run("""
        import os, stat
        os.mknod("disk", 0o600 | stat.S_IFBLK, os.makedev(7, 0))
        open("disk", "rb")
    """, limits(mode))
    assert result.status == sandbox.FAILED and "device" in result.reason, result


def test_socket_connect_is_blocked(mode):
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.2)
    host, port = server.getsockname()
    try:
        result = run(f"""
            import socket
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect("/tmp/nowhere.sock")
            except PermissionError:
                pass
            else:
                raise SystemExit("unix connect went through")
            socket.create_connection(({host!r}, {port}))
        """, limits(mode))
        assert result.status == sandbox.FAILED and "sandbox" in result.reason, result
        with pytest.raises(socket.timeout):
            server.accept()  # nobody connected
    finally:
        server.close()


def test_signals_to_other_processes_are_blocked(mode):
    result = run(f"import os\nos.kill({os.getpid()}, 9)", limits(mode))
    assert result.status == sandbox.FAILED and "os.kill" in result.reason
    # Before: pidfd_send_signal raises no audit event and reached the parent (signal 0 only checks).
    pidfd_signal = f"import os, signal\nsignal.pidfd_send_signal(os.pidfd_open({os.getpid()}), 0)"
    result = run(pidfd_signal, limits(mode))
    assert result.status == sandbox.FAILED, result
    assert "sandbox" in result.reason or "No such process" in result.reason  # refused, or not visible


def test_bypassing_modules_cannot_be_imported(mode):
    # Before: a subinterpreter (_xxsubinterpreters.run_string) has no audit hook and ran os.system.
    for name in ["ctypes", "_ctypes", "_xxsubinterpreters", "_testcapi", "_tkinter", "_sqlite3"]:
        result = run(f"import {name}", limits(mode))
        assert result.status == sandbox.FAILED and "sandbox: import" in result.reason, (name, result)
    # Before: shm_open (no audit event) made a file in /dev/shm.
    name = f"lm-sandbox-{uuid.uuid4().hex[:12]}"
    result = run(f"import os, _posixshmem\n_posixshmem.shm_open('/{name}', os.O_CREAT | os.O_RDWR, 0o600)",
                 limits(mode))
    created = os.path.exists(f"/dev/shm/{name}")
    if created:
        os.remove(f"/dev/shm/{name}")
    assert result.status == sandbox.FAILED and "sandbox" in result.reason and not created, result


def test_no_ctypes_types_are_left_in_the_program_interpreter(mode):
    # ctypes's types outlive the module (object.__subclasses__() reaches them) and a subclass of
    # _SimpleCData with _type_ "z" reads any address without an audit event, so ctypes is loaded
    # only by the first stage that installs the kernel layers, never where the program runs.
    result = run("""
        def subclasses(cls, seen):
            for sub in type.__subclasses__(cls):
                if sub not in seen:
                    seen.add(sub)
                    subclasses(sub, seen)
            return seen
        assert not [cls for cls in subclasses(object, set()) if "ctypes" in (cls.__module__ or "")]
    """, limits(mode))
    assert result.status == sandbox.PASSED, result


def test_hand_made_code_objects_are_refused(mode):
    result = run("f = lambda: 0\ng = f.__code__.replace(co_consts=())", limits(mode))
    assert result.status == sandbox.FAILED and "code.replace" in result.reason, result


# ----------------------------------------------------------------------------- escape 1: the guard's state

def test_rebinding_the_guard_does_not_disable_it(tmp_path, mode):
    # Before: the program ran as the sandbox module's __main__ and the hook read module globals,
    # so `sys.modules["__main__"]._BLOCKED_EVENTS = frozenset()` let os.system through.
    sentinel = tmp_path / "sentinel.txt"
    sentinel.write_text("precious")
    marker = tmp_path / "marker"
    result = run(f"""
        import builtins, os, posixpath, subprocess, sys
        def permissive(*args, **kwargs):
            return ""
        # every module global of every frame below the program, and the old design's __main__
        frame, namespaces = sys._getframe(), [vars(sys.modules["__main__"])]
        while frame is not None:
            namespaces.append(frame.f_globals)
            frame = frame.f_back
        namespaces.append(os.mkfifo.__globals__)  # the guard's, held by what it put in os.mkfifo's place
        try:
            import lm.eval.sandbox, lm.eval._sandbox_child, lm.eval._sandbox_guard
            namespaces += [vars(lm.eval.sandbox), vars(lm.eval._sandbox_child), vars(lm.eval._sandbox_guard)]
        except (ImportError, PermissionError):  # Landlock hides the repository
            pass
        for namespace in namespaces:
            for name, value in list(namespace.items()):
                if isinstance(value, (frozenset, tuple)) and name.isupper():
                    namespace[name] = type(value)()
                elif isinstance(value, type(permissive)) and namespace is not globals():
                    try:
                        value.__code__ = permissive.__code__
                    except PermissionError:
                        pass
                    namespace[name] = permissive
        # the builtins and os.path functions a guard might call
        os.path.realpath = posixpath.realpath = lambda path, **kwargs: "/tmp"
        os.readlink = lambda *args, **kwargs: "/tmp"
        builtins.isinstance = lambda *args: True
        escapes = [lambda: os.system("touch {marker}"),
                   lambda: open({str(marker)!r}, "w").write("x"),
                   lambda: os.remove({str(sentinel)!r}),
                   lambda: subprocess.run(["touch", {str(marker)!r}])]
        for escape in escapes:
            try:
                escape()
                print("ESCAPED")
            except OSError as error:
                print("refused:", error)
    """, limits(mode))
    assert "ESCAPED" not in result.stdout, result
    assert result.stdout.count("refused: sandbox:") == 4, result
    assert not marker.exists() and sentinel.read_text() == "precious"


def test_guard_functions_look_up_no_global_names():
    """The hook and the functions it calls are reachable through frames (a signal handler or finalizer that
    runs while the hook does): they must not depend on anything the program could rebind."""
    hook = _sandbox_guard.make_audit_hook("/nonexistent", 1)
    called = [_sandbox_guard._path_text, _sandbox_guard._descriptor_path, _sandbox_guard._real_path,
               _sandbox_guard._climbs_out, _sandbox_guard._open_refusal, _sandbox_guard._path_refusal]
    for function in called + [hook]:
        lookups = [f"{ins.opname} {ins.argval}" for ins in dis.get_instructions(function)
                   if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME", "STORE_GLOBAL", "DELETE_GLOBAL",
                                     "IMPORT_NAME", "MAKE_FUNCTION")]
        assert lookups == [], (function.__name__, lookups)
    for function in called:
        assert function.__code__.co_freevars == () and function.__defaults__ is None
    immutable = (str, int, frozenset, tuple, type, types.BuiltinFunctionType, types.FunctionType,
                 types.CodeType)
    for cell in hook.__closure__:
        assert isinstance(cell.cell_contents, immutable), cell.cell_contents
        if isinstance(cell.cell_contents, tuple):
            assert all(isinstance(item, immutable) for item in cell.cell_contents)


# ----------------------------------------------------------------------------- escape 2: processes

def test_spawned_processes_are_refused_and_none_outlives_the_run(mode):
    # Before: subprocess._fork_exec (bound at import, no audit event) started a setsid'd sleep
    # that outlived the run.
    marker = f"lm-sandbox-escape-{uuid.uuid4().hex[:12]}"
    result = run(f"""
        import importlib.util, os, pty, subprocess, sys
        import _posixsubprocess
        read_end, write_end = os.pipe()
        def fork_exec(function):
            return function([b"{marker}", b"30"], [b"/bin/sleep"], True, (write_end,), None, None,
                            -1, -1, -1, -1, -1, -1, read_end, write_end, True, True, -1, None, None,
                            None, -1, None, False)
        def fresh_posixsubprocess():
            spec = importlib.util.spec_from_file_location("_posixsubprocess", _posixsubprocess.__file__)
            return importlib.util.module_from_spec(spec).fork_exec
        def fork():
            if os.fork() == 0:
                os.setsid()
                os.execv("/bin/sleep", ["{marker}", "30"])
        attempts = {{
            "subprocess._fork_exec": lambda: fork_exec(subprocess._fork_exec),
            "_posixsubprocess.fork_exec": lambda: fork_exec(_posixsubprocess.fork_exec),
            "a fresh _posixsubprocess": lambda: fork_exec(fresh_posixsubprocess()),
            "reloaded _posixsubprocess": lambda: fork_exec(importlib.reload(_posixsubprocess).fork_exec),
            "os.posix_spawn": lambda: os.posix_spawn("/bin/sleep", ["{marker}", "30"], {{}}, setsid=True),
            "os.fork": fork,
            "pty.fork": pty.fork,
            "os.system": lambda: os.system("setsid sleep 30 &"),
            "subprocess.Popen": lambda: subprocess.Popen(["sleep", "30"], start_new_session=True),
        }}
        started = []
        for name, attempt in attempts.items():
            try:
                attempt()
                started.append(name)
            except (OSError, ImportError):
                pass
        print("started:", started)
    """, limits(mode))
    survivors = _processes_with(marker)
    for pid in survivors:
        os.kill(pid, 9)
    assert "started: []" in result.stdout, result
    assert survivors == []
    assert not group_alive(result.pid)


def _processes_with(marker):
    found = []
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(name))
        except (OSError, ValueError):
            continue
    return found


# ----------------------------------------------------------------------------- escape 3: the verdict

FORGERIES = {
    # Before: the child's result file was descriptor 3, opened before the program ran.
    "writes a record to every descriptor, then exits": """
        import os
        try:
            assert 2 + 2 == 5
        except AssertionError:
            for fd in range(1024):
                try:
                    os.write(fd, b'{"status": "passed", "reason": ""}')
                except OSError:
                    pass
            os._exit(0)
    """,
    "writes pass lines to every descriptor": """
        import os
        for fd in range(1024):
            try:
                os.write(fd, b"passed\\npassed 0123456789abcdef0123456789abcdef\\n")
            except OSError:
                pass
        assert 2 + 2 == 5
    """,
    "prints a pass and exits before the tests": """
        import sys
        print("passed")
        sys.exit(0)
        assert 2 + 2 == 5
    """,
    "ends the process part-way": """
        import os
        os._exit(0)
        assert 2 + 2 == 5
    """,
    "closes every descriptor": """
        import os
        os.closerange(0, 1024)
        assert 2 + 2 == 5
    """,
    # Before: the bootstrap's frame (sys._getframe(1)) held the open result file. Searches what
    # Python can see (frames below the program, their globals, closures, every module) for a
    # writable file, a pass record or a nonce, and writes a pass record wherever it can.
    "searches the interpreter for the channel": """
        import gc, io, os, sys, types
        seen, texts, files = set(), set(), []
        def visit(value, depth=0):
            if id(value) in seen or depth > 8:
                return
            seen.add(id(value))
            if isinstance(value, (str, bytes)):
                text = value.decode("latin-1") if isinstance(value, bytes) else value
                if "passed" in text or (len(text) == 32 and set(text) <= set("0123456789abcdef")):
                    texts.add(text)
                return
            if isinstance(value, io.IOBase):
                files.append(value)
                return
            if isinstance(value, types.FrameType):
                children = [value.f_locals, value.f_globals, value.f_back]
            elif isinstance(value, types.FunctionType):
                children = [value.__globals__, value.__defaults__, value.__code__.co_consts,
                            [cell.cell_contents for cell in value.__closure__ or ()]]
            elif isinstance(value, dict):
                children = list(value.values())
            elif isinstance(value, (list, tuple, set, frozenset)):
                children = list(value)
            elif isinstance(value, types.ModuleType):
                children = [vars(value)]
            else:
                return
            for child in children:
                visit(child, depth + 1)
        visit(sys._getframe())
        visit(dict(sys.modules))
        for source in (lambda: gc.get_objects(), lambda: open("/proc/self/mem", "rb"),
                       lambda: __import__("ctypes")):
            try:
                visit(source())
            except (OSError, ImportError):
                pass
        files = [file for file in files if file not in (sys.stdout, sys.stderr) and file.writable()]
        for file in files:
            file.write('{"status": "passed", "reason": ""}')
            file.flush()
        for text in texts if not files else ():
            record = text if text.startswith("passed") else "passed " + text
            for fd in range(3, 64):
                try:
                    os.write(fd, (record.strip() + "\\n").encode())
                except OSError:
                    pass
        os._exit(0)
    """,
    "reopens the channel through /proc": """
        import os
        for fd in range(3, 64):
            try:
                os.open(f"/proc/self/fd/{fd}", os.O_RDWR)
            except OSError:
                pass
        os._exit(0)
    """,
}


@pytest.mark.parametrize("forgery", list(FORGERIES), ids=[name.replace(" ", "-") for name in FORGERIES])
def test_program_cannot_forge_a_pass(forgery, mode):
    result = run(FORGERIES[forgery], limits(mode))
    assert result.status != sandbox.PASSED, result


def test_early_exit_is_not_a_pass(mode):
    result = run("import os\nos._exit(0)", limits(mode))
    assert result.status == sandbox.ERROR


# ----------------------------------------------------------------------------- escape 4: the parent

def test_child_environment_is_minimal(monkeypatch, mode):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    monkeypatch.setenv("LM_SANDBOX_TEST_SECRET", "hunter2")
    result = run("import os\nprint(sorted(os.environ))", limits(mode))
    assert result.status == sandbox.PASSED
    names = set(eval(result.stdout))
    assert names <= {"PATH", "HOME", "TMPDIR", "LANG", "PYTHONDONTWRITEBYTECODE", "PYTHONHASHSEED",
                     "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "LC_CTYPE"}, names


def test_parent_proc_entries_are_unreadable(mode):
    # Before: the program printed /proc/<parent>/environ.
    parent = os.getpid()
    with open("/proc/self/environ", "rb") as f:
        some_variable = f.read().split(b"\0")[0].decode()
    for path in [f"/proc/{parent}/environ", f"/proc/{parent}/cmdline", f"/proc/{parent}/mem",
                 f"/proc/self/../{parent}/environ", f"/proc/{parent}/task/{parent}/environ",
                 f"/proc/{parent}/root/proc/{parent}/environ", "/proc/self/mem"]:
        result = run(f"""
            import os
            try:
                print(open({path!r}, "rb").read())
            except PermissionError:
                fd = os.open({path!r}, os.O_RDONLY)
                print(os.read(fd, 1 << 16))
        """, limits(mode))
        assert result.status == sandbox.FAILED and "sandbox" in result.reason, (path, result)
        assert some_variable not in result.stdout


# ----------------------------------------------------------------------------- escape 5: the OS layer

@needs_os_layer
def test_os_layer_hides_other_processes():
    result = run(f"""
        import os
        print(os.getpid(), os.getppid(), os.path.exists("/proc/{os.getpid()}"), os.getuid())
    """, limits("require"))
    assert result.status == sandbox.PASSED, result
    assert result.stdout.split()[:3] == ["1", "0", "False"]
    assert "namespaces" in result.isolation and "seccomp" in result.isolation


@needs_os_layer
def test_nothing_started_in_the_namespace_outlives_it():
    """The guard leaves no way to start a process; were one started anyway (in a new session, out
    of the process group), it would die with the pid namespace's init when the run is killed."""
    marker = f"lm-sandbox-orphan-{uuid.uuid4().hex[:12]}"
    # the marker is assembled at run time: the starter's own command line must not contain it
    starter = (f"import os, time\nif os.fork() == 0:\n    os.setsid()\n"
               f"    os.execv('/bin/sleep', ['{marker[::-1]}'[::-1], '30'])\ntime.sleep(30)")
    proc = subprocess.Popen([*_sandbox_isolation.detect_once().command_prefix, sys.executable, "-c", starter],
                            start_new_session=True)
    deadline = time.monotonic() + 10
    while not _processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _processes_with(marker), "the orphan did not start"
    _sandbox_process.end(proc, in_namespaces=True)  # how run_program ends a run that timed out
    while _processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.01)
    survivors = _processes_with(marker)
    for pid in survivors:
        os.kill(pid, 9)
    assert survivors == []


@needs_os_layer
def test_os_layer_has_no_network_but_loopback():
    result = run("""
        with open("/proc/self/net/dev") as f:
            print(sorted(line.split(":")[0].strip() for line in f.readlines()[2:]))
    """, limits("require"))
    assert result.status == sandbox.PASSED, result
    assert result.stdout.strip() == "['lo']"


@needs_os_layer
def test_kernel_layer_stops_what_the_guard_cannot_see(tmp_path):
    # A fresh copy of the builtin posix module (made without an audit event) has the original
    # mkfifo, which the guard replaced: only seccomp and Landlock stop it.
    fifo = tmp_path / "fifo"
    result = run(f"""
        import _imp, importlib.machinery
        posix = _imp.create_builtin(importlib.machinery.ModuleSpec("posix", None))
        posix.mkfifo({str(fifo)!r})
    """, limits("require"))
    assert result.status == sandbox.FAILED and "PermissionError" in result.reason, result
    assert not fifo.exists()


@needs_os_layer
def test_os_layer_hides_files_outside_the_python_installation(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("hunter2")
    result = run(f"print(open({str(secret)!r}).read())", limits("require"))
    assert result.status == sandbox.FAILED and "PermissionError" in result.reason, result
    assert "hunter2" not in result.stdout


KERNEL_LAYER_CHECK = """
import os, socket, subprocess, sys, threading
from lm.eval import _sandbox_kernel
work = sys.argv[1]
_sandbox_kernel.install_landlock(work, [sys.prefix, sys.base_prefix, *sys.path], ["/dev/null"],
                                 [os.path.realpath(sys.executable)])
_sandbox_kernel.install_seccomp_filter()
open(os.path.join(work, "inside.txt"), "w").write("ok")
threads = [threading.Thread(target=sum, args=([1],)) for _ in range(4)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
refused = []
for name, attempt in {"fork": os.fork, "exec": lambda: os.execv("/bin/true", ["true"]),
                      "subprocess": lambda: subprocess.run(["true"]),
                      "tcp": lambda: socket.socket(socket.AF_INET),
                      "write outside": lambda: open(os.path.join(work, "..", "outside.txt"), "w"),
                      "read outside": lambda: open(os.path.join(work, "..", "secret.txt")),
                      "signal": lambda: os.kill(os.getppid(), 0)}.items():
    try:
        attempt()
    except PermissionError:
        refused.append(name)
print(refused)
"""


@needs_os_layer
def test_kernel_layers_hold_without_the_guard(tmp_path):
    """seccomp and Landlock on their own, in a process without the audit hook."""
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "secret.txt").write_text("hunter2")
    done = subprocess.run([sys.executable, "-c", KERNEL_LAYER_CHECK, str(work)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(["fork", "exec", "subprocess", "tcp", "write outside",
                                       "read outside", "signal"])
    assert (work / "inside.txt").read_text() == "ok" and not (tmp_path / "outside.txt").exists()


def test_require_refuses_to_run_without_the_os_layer(monkeypatch):
    missing = _sandbox_isolation.Isolation(missing=("no namespaces (test): consequences",))
    monkeypatch.setattr(_sandbox_isolation, "_detected", missing)
    with pytest.raises(sandbox.SandboxUnavailable, match="no namespaces"):
        sandbox.run_program("pass", limits("require"))


def test_auto_warns_once_and_runs_without_the_os_layer(monkeypatch, caplog):
    missing = _sandbox_isolation.Isolation(missing=("no landlock (test): consequences",))
    monkeypatch.setattr(_sandbox_isolation, "_detected", missing)
    monkeypatch.setattr(_sandbox_isolation, "_warned", set())
    results = [sandbox.run_program("pass", limits("auto")) for _ in range(2)]
    assert [r.status for r in results] == [sandbox.PASSED] * 2 and results[0].isolation == ()
    warnings = [r for r in caplog.records if "no landlock (test)" in r.getMessage()]
    assert len(warnings) == 1 and "os_isolation='off'" in warnings[0].getMessage()


def test_os_isolation_is_validated():
    with pytest.raises(ValueError, match="os_isolation"):
        sandbox.Limits(os_isolation="on")
