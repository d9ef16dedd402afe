"""Every file the project writes goes through lm.fileio (whole files atomically, with the usual
permissions; logs a record at a time) or orbax. A plain ``open(path, "w")`` leaves half a file
behind when a run is killed mid-write, so this test refuses one anywhere in the code, except on a
line marked ``# stream: <why>`` (on the line itself or the comment line above it), for handles
that really are streams, such as a child process's stdout."""
import ast
import os
import re

import pytest

from tests.helpers import ROOT

SCANNED = ("lm", "launch", "benchmarks", "experiments")
WRITER = os.path.join("lm", "fileio.py")
MARKER = re.compile(r"#\s*stream:\s*\S")

# Calls that create or write a file whatever their arguments.
ALWAYS_WRITES = {"NamedTemporaryFile", "TemporaryFile", "SpooledTemporaryFile", "mkstemp"}
# pathlib's; MetricsWriter.write_text(step, tag, text) (TensorBoard) takes three arguments.
PATH_WRITES = {"write_text", "write_bytes"}
WRITE_FLAGS = {"O_WRONLY", "O_RDWR", "O_CREAT", "O_APPEND", "O_TRUNC"}
MODE = re.compile(r"^[rwxabtU+]+$")


def _name(func: ast.expr) -> str:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


def _is_write_mode(node: ast.expr) -> bool:
    return (isinstance(node, ast.Constant) and isinstance(node.value, str)
            and bool(MODE.match(node.value)) and bool(set(node.value) & set("wax+")))


def _open_mode_args(call: ast.Call) -> list[ast.expr]:
    """The arguments that may be the mode: open(file, mode), gzip.open(file, mode),
    Path(...).open(mode), or mode=..."""
    return call.args[:2] + [k.value for k in call.keywords if k.arg == "mode"]


def _os_open_writes(call: ast.Call) -> bool:
    flags = {n.attr for arg in call.args[1:2] for n in ast.walk(arg) if isinstance(n, ast.Attribute)}
    return bool(flags & WRITE_FLAGS)


def is_file_write(call: ast.Call) -> bool:
    name = _name(call.func)
    if name in ALWAYS_WRITES:
        return True
    if name in PATH_WRITES:
        return len(call.args) < 3
    if name == "open" and isinstance(call.func, ast.Attribute) and _name(call.func.value) == "os":
        return _os_open_writes(call)
    if name in ("open", "fdopen"):
        return any(_is_write_mode(arg) for arg in _open_mode_args(call))
    return False


def _marked(lines: list[str], lineno: int) -> bool:
    """The marker on the call's line, or on a comment line right above it."""
    above = lines[lineno - 2].strip() if lineno >= 2 else ""
    return bool(MARKER.search(lines[lineno - 1])) or (above.startswith("#") and bool(MARKER.search(above)))


def unmarked_writes(source: str) -> list[int]:
    """Line numbers of file writes in ``source`` that carry no stream marker."""
    lines = source.splitlines()
    return sorted(node.lineno for node in ast.walk(ast.parse(source))
                  if isinstance(node, ast.Call) and is_file_write(node) and not _marked(lines, node.lineno))


def project_files() -> list[str]:
    found = []
    for top in SCANNED:
        for folder, dirs, files in os.walk(os.path.join(ROOT, top)):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            found += [os.path.relpath(os.path.join(folder, f), ROOT) for f in files if f.endswith(".py")]
    return sorted(found)


def _read(path: str) -> str:
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return f.read()


def test_every_file_write_goes_through_the_atomic_writer():
    offenders = [f"{path}:{line}" for path in project_files() if path != WRITER
                 for line in unmarked_writes(_read(path))]
    assert not offenders, (
        "files written without lm.fileio (use write_atomically, or append_text for a log; mark a "
        "real stream with '# stream: <why>'):\n  " + "\n  ".join(offenders))


@pytest.mark.parametrize("line", [
    'open(path, "w")', "open(path, 'wb')", 'open(path, "a", encoding="utf-8")', 'open(path, mode="x")',
    'io.open(path, "r+")', 'gzip.open(path, "wt")', 'pathlib.Path(p).open("w")', 'os.fdopen(fd, "wb")',
    'pathlib.Path(p).write_text("x")', 'tempfile.NamedTemporaryFile("w", delete=False)',
    "os.open(path, os.O_WRONLY | os.O_CREAT)",
])
def test_the_scan_catches_writes(line):
    assert unmarked_writes(f"x = 1\n{line}\n") == [2]


@pytest.mark.parametrize("line", [
    "open(path)", 'open(path, "rb")', 'open(path, encoding="utf-8")', "os.open(path, os.O_RDONLY)",
    'gzip.open(path, "rt")', 'pathlib.Path(p).open()', 'json.dumps("w")',
    'writer.write_text(step, "samples", text)',
])
def test_the_scan_lets_reads_through(line):
    assert unmarked_writes(f"{line}\n") == []


def test_a_marked_stream_is_allowed_but_an_empty_marker_is_not():
    assert unmarked_writes('out = open(path, "wb")  # stream: the child writes its output here\n') == []
    assert unmarked_writes('# stream: the child writes its output here\nout = open(path, "wb")\n') == []
    assert unmarked_writes('out = open(path, "wb")  # stream:\n') == [1]
    assert unmarked_writes('# stream: why\nx = 1\nout = open(path, "wb")\n') == [3]
