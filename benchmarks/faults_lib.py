"""Building blocks of ``python -m benchmarks.faults``: the small training run as a subprocess,
what a run leaves on disk (metrics, checkpoints, orbax temporary folders), the bitwise comparison
of two runs' final states, and the faults (damaged checkpoint files, a small tmpfs).

Checkpoints are read with orbax directly (read-only, no restore target: every array as saved),
not through ``lm.train``: the code that writes them is checked with a reader of its own."""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
from typing import Optional

import numpy as np

from lm.fileio import write_atomically

ROOT = pathlib.Path(__file__).resolve().parents[1]
TMP_MARK = "orbax-checkpoint-tmp"
NO_SPACE = "No space left on device"
POLL_S = 0.002
LIVE: set = set()  # the training processes still running (end_all() ends them)

# The smoke variant of the default experiment shrunk to 25k parameters on synthetic tokens (as
# in tests/helpers.small_config): a step takes milliseconds, so the checkpoints dominate.
SMALL_RUN = (
    "--config=experiments/shakespeare_char.py:smoke", "--config.data.backend=synthetic",
    "--config.data.synthetic_vocab_size=64", "--config.model.vocab_size=64",
    "--config.data.batch_size=8", "--config.data.seq_len=16", "--config.data.eval_batches=2",
    "--config.model.num_layers=2", "--config.model.d_model=32", "--config.model.num_heads=4",
    "--config.model.num_kv_heads=2", "--config.model.max_len=16", "--config.mesh.data=1",
    "--config.train.log_every=1", "--config.train.sample_tokens=0",
    "--config.train.progress=False", "--config.train.keep_checkpoints=3",
    "--config.train.async_checkpoint=True")


def train_command(workdir: str, steps: int, checkpoint_every: int, extra=()) -> list[str]:
    """``python -m launch.main`` with the small run, ``steps`` steps and one evaluation at the end."""
    return [sys.executable, "-m", "launch.main", *SMALL_RUN, f"--config.train.steps={steps}",
            f"--config.train.eval_every={steps}",
            f"--config.train.checkpoint_every={checkpoint_every}", *extra, f"--workdir={workdir}"]


def child_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return {**env, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}


@dataclasses.dataclass
class Outcome:
    """How a training process ended and what it printed."""
    returncode: Optional[int]
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool = False

    def exit_text(self) -> str:
        if self.timed_out:
            return f"timed out after {self.seconds:.0f} s (killed)"
        code = self.returncode
        if code is not None and code < 0:
            return f"killed by {signal.Signals(-code).name} (exit {128 - code} in a shell)"
        return f"exit {code}"

    def resumed_from(self) -> Optional[int]:
        """The step training started from (0: a fresh start); None before it said."""
        found = re.search(r"resuming at step (\d+)", self.stdout)
        return int(found.group(1)) if found else (0 if "training " in self.stdout else None)


class Training:
    """One training process; its stdout and stderr go to ``<log_prefix>.out`` / ``.err``."""

    def __init__(self, command: list[str], workdir: str, log_prefix: str):
        self.workdir = workdir
        self.checkpoints = os.path.join(workdir, "checkpoints")
        self.tmp_before = tmp_dirs(self.checkpoints)
        self.log_prefix = log_prefix
        self._metrics = os.path.join(workdir, "metrics.jsonl")
        self._offset = os.path.getsize(self._metrics) if os.path.exists(self._metrics) else 0
        self._partial = ""
        self.steps_logged: list[int] = []
        self.first_row_s: Optional[float] = None
        self.started = time.monotonic()
        # stream: the child process's stdout and stderr
        with open(log_prefix + ".out", "w") as out, open(log_prefix + ".err", "w") as err:
            self.proc = subprocess.Popen(command, cwd=ROOT, env=child_env(), stdout=out, stderr=err,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        LIVE.add(self.proc)

    def running(self) -> bool:
        return self.proc.poll() is None

    def last_step(self) -> int:
        """The last train step this process logged (-1 before its first row)."""
        self._read_new_rows()
        return self.steps_logged[-1] if self.steps_logged else -1

    def _read_new_rows(self) -> None:
        if not os.path.exists(self._metrics):
            return
        with open(self._metrics, "rb") as f:
            f.seek(self._offset)
            chunk = f.read()
        self._offset += len(chunk)
        lines = (self._partial + chunk.decode("utf-8", "replace")).split("\n")
        self._partial = lines.pop()
        for line in lines:
            row = _json_row(line)
            if row and "train/loss" in row:
                if self.first_row_s is None:
                    self.first_row_s = time.monotonic() - self.started
                self.steps_logged.append(int(row["step"]))

    def fresh_tmp_dirs(self) -> list[str]:
        """orbax temporary folders written by this process (new, or changed since it started)."""
        now = tmp_dirs(self.checkpoints)
        return sorted(name for name, mtime in now.items() if self.tmp_before.get(name) != mtime)

    def wait_until(self, condition, timeout: float) -> bool:
        """Polls ``condition()`` every few ms while the process runs; False if it ended first."""
        deadline = time.monotonic() + timeout
        while self.running() and time.monotonic() < deadline:
            if condition():
                return True
            time.sleep(POLL_S)
        return False

    def send(self, sig: int) -> None:
        if self.running():
            self.proc.send_signal(sig)

    def wait(self, timeout: float) -> Outcome:
        """Waits for the end (killing the process after ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        while self.running() and time.monotonic() < deadline:
            self.last_step()  # notes when the first row came
            time.sleep(0.05)
        timed_out = self.running()
        if timed_out:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        LIVE.discard(self.proc)
        self.last_step()
        return Outcome(self.proc.returncode, _read(self.log_prefix + ".out"),
                       _read(self.log_prefix + ".err"), time.monotonic() - self.started, timed_out)


def end_all() -> None:
    """Kills every training process still running, with its process group."""
    for proc in list(LIVE):
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def _read(path: str) -> str:
    with open(path, errors="replace") as f:
        return f.read()


def _json_row(line: str) -> Optional[dict]:
    try:
        row = json.loads(line)
    except ValueError:
        return None
    return row if isinstance(row, dict) else None


def summarize(outcome: Outcome, limit: int = 220) -> str:
    """The exit, then what the run said about it: ``error:`` lines, lines naming a checkpoint that
    was moved aside, and the last line of a traceback."""
    lines = [line.strip() for line in (outcome.stdout + "\n" + outcome.stderr).splitlines()]
    said = [line for line in lines if line.startswith("error:") or "moved aside" in line
            or (re.search(r"\bSIG(TERM|INT)\b", line) and not line.startswith("done:"))]
    if "Traceback (most recent call last)" in outcome.stderr:
        said.append(f"traceback ({len(stderr_lines(outcome))} stderr lines), first exception: "
                    + _exception_line(outcome.stderr))
    full_disk = next((line for line in lines if NO_SPACE in line), "")
    if full_disk and full_disk not in said:
        at = full_disk.index(NO_SPACE)
        said.append(f"first line naming it: ...{full_disk[max(0, at - 100):at + len(NO_SPACE)]}")
    if any(line.startswith("done:") for line in lines):
        said.append("printed done:")
    text = "; ".join(dict.fromkeys(line[:limit] for line in said))
    return f"{outcome.exit_text()}" + (f"; {text}" if text else "")


def _exception_line(stderr: str) -> str:
    """The first exception named in ``stderr`` (the cause; later ones may come from shutdown)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    named = [line for line in lines if re.match(r"^[\w.]+(Error|Exception|Interrupt|Exit)\b", line)]
    return (named or lines[-1:] or ["?"])[0].strip()


def stderr_lines(outcome: Outcome) -> list[str]:
    return [line for line in outcome.stderr.splitlines() if line.strip()]


def tmp_dirs(checkpoint_dir: str) -> dict[str, int]:
    """orbax's temporary (unfinished) checkpoint folders in ``checkpoint_dir``, with mtimes."""
    found = {}
    with contextlib.suppress(FileNotFoundError), os.scandir(checkpoint_dir) as entries:
        for entry in entries:
            with contextlib.suppress(FileNotFoundError):  # renamed into place while we looked
                if TMP_MARK in entry.name:
                    found[entry.name] = entry.stat().st_mtime_ns
    return found


def step_dirs(checkpoint_dir: str) -> list[int]:
    """The steps of the finished checkpoint folders (named by their step)."""
    names = os.listdir(checkpoint_dir) if os.path.isdir(checkpoint_dir) else []
    return sorted(int(name) for name in names if name.isdigit())


def restore(checkpoint_dir: str, step: int) -> tuple[dict[str, np.ndarray], dict]:
    """Every array of the train state saved at ``step`` (as saved: no target) and the data
    iterator's position."""
    import jax
    import orbax.checkpoint as ocp
    options = ocp.CheckpointManagerOptions(read_only=True, create=False)
    reader = ocp.CheckpointManager(os.path.abspath(checkpoint_dir), options=options)
    try:
        restored = reader.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(), data=ocp.args.JsonRestore()))
    finally:
        reader.close()
    arrays = {jax.tree_util.keystr(path): np.asarray(leaf)
              for path, leaf in jax.tree_util.tree_leaves_with_path(restored["state"])}
    return arrays, dict(restored["data"])


def inspect(checkpoint_dir: str) -> tuple[dict[int, str], dict[int, int]]:
    """Every step folder in ``checkpoint_dir`` read back: the ones that do not restore (with the
    first words of why) and the ones that hold NaN or Inf (with the number of such arrays)."""
    unloadable, nonfinite = {}, {}
    for step in step_dirs(checkpoint_dir):
        try:
            arrays, _ = restore(checkpoint_dir, step)
        except Exception as e:  # noqa: BLE001 - any failure to read counts
            unloadable[step] = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:80]}"
            continue
        count = sum(1 for a in arrays.values()
                    if np.issubdtype(a.dtype, np.inexact) and not np.isfinite(a).all())
        if count:
            nonfinite[step] = count
    return unloadable, nonfinite


def jsonl(path: str) -> list[dict]:
    """The JSON objects of a JSON-lines file (a torn line is skipped)."""
    return [row for row in map(_json_row, _read(path).splitlines()) if row]


def losses(workdir: str) -> tuple[dict[int, Optional[float]], int]:
    """train/loss by step from metrics.jsonl (the last row of a step wins: a resumed run logs the
    steps after its checkpoint again), and how many repeated steps logged a different loss."""
    by_step: dict[int, Optional[float]] = {}
    disagreeing = 0
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return by_step, 0
    for row in jsonl(path):
        if "train/loss" not in row:
            continue
        step = int(row["step"])
        if step in by_step and by_step[step] != row["train/loss"]:
            disagreeing += 1
        by_step[step] = row["train/loss"]
    return by_step, disagreeing


def spike_events(workdir: str) -> str:
    """spikes.jsonl in a few words: its rows counted by event."""
    path = os.path.join(workdir, "spikes.jsonl")
    if not os.path.exists(path):
        return "absent"
    rows = jsonl(path)
    kinds = collections.Counter(str(row.get("event", "?")) for row in rows)
    return f"{len(rows)} rows ({', '.join(f'{k}: {n}' for k, n in kinds.items())})"


def pages(path: str) -> int:
    """Bytes that the files under ``path`` take on a tmpfs (whole 4 KiB pages)."""
    total = 0
    for folder, _, names in os.walk(path):
        for name in names:
            size = os.path.getsize(os.path.join(folder, name))
            total += -(-size // 4096) * 4096
    return total


@dataclasses.dataclass
class Comparison:
    """A run's final state and losses against the uninterrupted reference's."""
    step: Optional[int]
    expected_step: int
    arrays: int = 0
    differing: list = dataclasses.field(default_factory=list)
    data_equal: bool = False
    losses_compared: int = 0
    losses_differing: int = 0
    repeats_disagreeing: int = 0
    error: str = ""

    @property
    def equal(self) -> bool:
        return (not self.error and self.step == self.expected_step and self.arrays > 0
                and not self.differing and self.data_equal and not self.losses_differing
                and self.losses_compared > 0)

    def describe(self) -> str:
        if self.error:
            return f"final checkpoint (step {self.step}) unreadable: {self.error}"
        parts = [f"final step {self.step}", f"{self.arrays - len(self.differing)}/{self.arrays} "
                 f"arrays bitwise equal", "data position " + ("equal" if self.data_equal else "differs"),
                 f"{self.losses_compared - self.losses_differing}/{self.losses_compared} losses equal"]
        if self.repeats_disagreeing:
            parts.append(f"{self.repeats_disagreeing} re-run steps logged a different loss")
        return ", ".join(parts)


def compare(workdir: str, reference: str, expected_step: int) -> Comparison:
    """Every array of ``workdir``'s latest checkpoint against the reference's at the same step
    (same dtype, shape and bytes), the data position, and train/loss at every logged step."""
    steps = step_dirs(os.path.join(workdir, "checkpoints"))
    result = Comparison(step=steps[-1] if steps else None, expected_step=expected_step)
    run_losses, result.repeats_disagreeing = losses(workdir)
    ref_losses, _ = losses(reference)
    shared = sorted(set(run_losses) & set(ref_losses))
    result.losses_compared = len(ref_losses)
    result.losses_differing = (sum(run_losses[s] != ref_losses[s] for s in shared)
                               + len(set(ref_losses) - set(run_losses)))
    if result.step is None:
        result.error = "no checkpoint"
        return result
    try:
        mine, my_data = restore(os.path.join(workdir, "checkpoints"), result.step)
        ref, ref_data = restore(os.path.join(reference, "checkpoints"), expected_step)
    except Exception as e:  # noqa: BLE001 - reported
        result.error = f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
        return result
    result.arrays = len(ref)
    result.differing = [key for key, a in ref.items() if not same_bytes(a, mine.get(key))]
    result.data_equal = my_data == ref_data
    return result


def same_bytes(a: np.ndarray, b: Optional[np.ndarray]) -> bool:
    return (b is not None and a.dtype == b.dtype and a.shape == b.shape
            and a.tobytes() == b.tobytes())


def largest_data_file(step_dir: str) -> str:
    """The biggest array data file of a checkpoint (the ocdbt ``d/`` files under ``state/``)."""
    files = [os.path.join(folder, name)
             for folder, _, names in os.walk(os.path.join(step_dir, "state"))
             if os.path.basename(folder) == "d" for name in names]
    return max(files, key=os.path.getsize)


def damage(path: str, how: str) -> str:
    """Truncates ``path`` to half, zeroes it, or flips one byte in its middle; says what it did."""
    size = os.path.getsize(path)
    if how == "truncate":
        os.truncate(path, size // 2)
        return f"truncated to {size // 2} of {size} bytes"
    if how == "zero":
        write_atomically(path, bytes(size))
        return f"{size} bytes zeroed"
    if how == "flip":
        data = bytearray(pathlib.Path(path).read_bytes())
        data[size // 2] ^= 0xFF
        write_atomically(path, bytes(data))
        return f"byte {size // 2} of {size} inverted"
    raise ValueError(f"unknown damage {how!r}")


def on_tmpfs(command: list[str], mount: str, size_kib: int, copy_to: str, limit_s: int) -> list[str]:
    """``command`` in its own user and mount namespace with a ``size_kib`` tmpfs at ``mount``,
    killed after ``limit_s`` seconds (exit 137); then ``<mount>/run`` is copied to ``copy_to``
    (the tmpfs ends with the namespace). Exits 97 when the tmpfs cannot be mounted."""
    script = (f'mnt=$1; out=$2; shift 2; mount -t tmpfs -o size={size_kib}k tmpfs "$mnt" || exit 97; '
              f'timeout -s KILL {limit_s} "$@"; rc=$?; cp -a "$mnt/run" "$out"; exit $rc')
    return ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, "sh", mount,
            copy_to, *command]
