"""The sandbox's OS layer, seen from the parent: which kernel layers this machine offers.

``detect_once()`` finds out, once per process, whether ``unshare`` can give a run its own user,
pid, network, IPC and mount namespaces (a probe that must show the program as pid 1), which
Landlock ABI the kernel offers and whether it takes the seccomp filter
(lm/eval/_sandbox_kernel.py). ``landlock_config`` says what Landlock lets a run read, write and
execute. A missing layer is reported with ``logging.warning`` once per process, naming it, why it
is missing and what a program could then do.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import threading

from lm.eval import _sandbox_kernel
from lm.eval._sandbox_process import child_env

log = logging.getLogger("lm.eval.sandbox")  # the public module's logger: one name to configure


@dataclasses.dataclass(frozen=True)
class Isolation:
    """How runs are isolated by the kernel on this machine."""
    command_prefix: tuple[str, ...] = ()  # unshare and its flags, () without namespaces
    kernel_layers: bool = False           # a first stage installs Landlock and seccomp
    expected: tuple[str, ...] = ()        # layer names the child should report in force
    missing: tuple[str, ...] = ()         # one line per missing layer: what and why


NO_ISOLATION = Isolation()
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

_detected: Isolation | None = None
_detect_lock = threading.Lock()
_warned: set[str] = set()


# ----------------------------------------------------------------------------- detection

def detect_once() -> Isolation:
    """What this machine offers, found out on the first call."""
    global _detected
    with _detect_lock:
        if _detected is None:
            _detected = _detect()
        return _detected


def _detect() -> Isolation:
    prefix, namespace_problem = _namespace_prefix()
    seccomp_problem = _sandbox_kernel.seccomp_unavailable_reason()
    landlock_problem = "" if _sandbox_kernel.landlock_abi() >= 1 else "Landlock is not offered by this kernel"
    problems = {"namespaces": namespace_problem, "landlock": landlock_problem, "seccomp": seccomp_problem}
    missing = tuple(f"no {layer} ({problem}): {_CONSEQUENCES[layer]}"
                    for layer, problem in problems.items() if problem)
    expected = tuple(layer for layer, problem in problems.items() if not problem)
    return Isolation(command_prefix=prefix, kernel_layers=not (seccomp_problem and landlock_problem),
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
                              env=child_env("/"))
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"{' '.join(prefix[:1])}: {error}"
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else f"unshare exited with code {done.returncode}"
    return ""


# ----------------------------------------------------------------------------- Landlock's rules

def landlock_config(work: str) -> dict:
    """What the first stage's Landlock ruleset grants a run whose working directory is ``work``."""
    return {"workdir": work, "readable": _readable_paths(), "writable_files": ["/dev/null"],
            "executables": _interpreter_files()}


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


# ----------------------------------------------------------------------------- warnings

def warn_about_unapplied(lines: list[str], mode: str) -> None:
    """The child could not apply a layer that detection found (written before the program ran,
    on the channel's lines after the first)."""
    if mode == "off":
        return
    for line in lines[1:]:
        if not line.startswith("unapplied "):
            break  # the program's own output starts here
        layer, _, why = line[len("unapplied "):].partition(": ")
        warn_once(f"no {layer} ({why}): {_CONSEQUENCES.get(layer, 'a layer the machine offers is missing')}")


def warn_once(line: str) -> None:
    """Logs a warning about a missing layer, once per process."""
    with _detect_lock:
        if line in _warned:
            return
        _warned.add(line)
    log.warning("lm.eval.sandbox runs untrusted programs with %s. Limits(os_isolation='off') runs "
                "without the OS layer and without this warning; 'require' refuses to run.", line)
