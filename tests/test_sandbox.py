"""The sandbox stops wrong, runaway and harmful programs and leaves the machine as it was."""
import os
import socket
import textwrap
import time

import pytest

from lm.eval import sandbox

FAST = sandbox.Limits(timeout_s=10.0)  # generous: the machine may be busy; runs finish in ~0.1 s


def run(source, limits=FAST):
    return sandbox.run_program(textwrap.dedent(source), limits)


def group_alive(pgid):
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_correct_program_passes_and_workdir_is_removed():
    result = run("""
        import os
        def add(a, b):
            return a + b
        assert add(2, 3) == 5
        with open("scratch.txt", "w") as f:  # writing inside the sandbox is allowed
            f.write("ok")
        os.remove("scratch.txt")
        print(os.getcwd())
    """)
    assert result.status == sandbox.PASSED, result
    assert result.stdout.strip() == result.workdir
    assert not os.path.exists(result.workdir)
    assert not group_alive(result.pid)


def test_wrong_program_fails_with_reason():
    result = run("""
        def add(a, b):
            return a - b
        assert add(2, 3) == 5, "add is wrong"
    """)
    assert result.status == sandbox.FAILED
    assert result.reason == "AssertionError: add is wrong (line 4)"


def test_infinite_loop_is_stopped_by_time_limit():
    start = time.monotonic()
    result = run("while True: pass", sandbox.Limits(timeout_s=1.0))
    assert result.status == sandbox.TIMED_OUT
    assert time.monotonic() - start < 5
    assert not group_alive(result.pid)


def test_fork_bomb_is_stopped():
    start = time.monotonic()
    result = run("import os\nwhile True: os.fork()", sandbox.Limits(timeout_s=2.0))
    assert result.status == sandbox.FAILED and "os.fork" in result.reason
    assert time.monotonic() - start < 5
    assert not group_alive(result.pid)


def test_persistent_fork_bomb_is_stopped_by_time_limit():
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
    """, sandbox.Limits(timeout_s=1.0))
    assert result.status == sandbox.TIMED_OUT, result
    assert not group_alive(result.pid)


def test_memory_hog_is_stopped():
    start = time.monotonic()
    result = run("x = bytearray(10 * 1024 ** 3)\nx[-1] = 1")
    assert result.status == sandbox.FAILED and "MemoryError" in result.reason
    assert time.monotonic() - start < 5


def test_deleting_outside_the_sandbox_is_blocked(tmp_path):
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
                 f"os.unlink('sentinel.txt', dir_fd=fd)"]:
        result = run(code)
        assert result.status == sandbox.FAILED and "sandbox" in result.reason, (code, result)
    assert sentinel.read_text() == "precious"


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can make device nodes")
def test_device_nodes_made_inside_cannot_be_opened():
    result = run("""
        import os, stat
        os.mknod("disk", 0o600 | stat.S_IFBLK, os.makedev(7, 0))
        open("disk", "rb")
    """)
    assert result.status == sandbox.FAILED and "device" in result.reason, result


def test_socket_connect_is_blocked():
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
        """)
        assert result.status == sandbox.FAILED and "sandbox" in result.reason, result
        with pytest.raises(socket.timeout):
            server.accept()  # nobody connected
    finally:
        server.close()


def test_signals_to_other_processes_are_blocked():
    result = run(f"import os\nos.kill({os.getpid()}, 9)")
    assert result.status == sandbox.FAILED and "os.kill" in result.reason


def test_child_environment_has_no_proxy(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    result = run("import os\nprint(sorted(k for k in os.environ if 'proxy' in k.lower()))")
    assert result.status == sandbox.PASSED and result.stdout.strip() == "[]"


def test_early_exit_is_not_a_pass():
    result = run("import os\nos._exit(0)")
    assert result.status == sandbox.ERROR
