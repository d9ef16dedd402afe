"""Checkpoints with orbax: every K steps and at the end, keep N, resume from the latest that is
sound.

Orbax writes each step into a temporary directory and renames it when complete, so a crash
mid-save leaves the previous checkpoint as the latest loadable one. The data iterator's position
is saved next to the train state (as JSON), so a resumed run sees exactly the batches that an
uninterrupted run would have seen.

Around that:
- every file of a finished step gets a CRC-32 in ``<step>/checksums.json`` (``lm.train.checksums``),
  checked before the step is restored;
- a step that fails its checksums or fails to restore is moved aside into ``checkpoints.bad/``
  (never deleted) with a one-line message, and the step before it is used;
- a step whose array shapes differ from the configured model is not damaged but someone else's:
  that stops with a CheckpointError naming the fix, and nothing is moved;
- an asynchronous save that fails (a full disk) stops the run at the next step with one line
  (``RunStopped``); the previous checkpoint is intact.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import sys
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

from lm.train import checksums
from lm.train.errors import RunStopped

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used (e.g. it belongs to a different model); names the fix."""


class DamagedCheckpoint(Exception):
    """A step's files fail their checksums or cannot be read back."""


class Checkpointer:
    def __init__(self, directory: str, keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save,
                                               cleanup_tmp_directories=True)
        # Named handlers let a fresh manager read a step's metadata before anything is saved.
        handlers = {"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler()}
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)
        _report_failed_saves_once()
        self._sealer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checksums")
        self._sealing: Optional[Future] = None
        self._sealing_step: Optional[int] = None
        self._unsealed: Optional[int] = None   # saved (maybe still writing), checksums not yet

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_state: dict, force: bool = False) -> bool:
        self._finish_previous_save()
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  data=ocp.args.JsonSave(data_state))
        try:
            saved = self.manager.save(step, args=args, force=force)
        except Exception as e:  # noqa: BLE001 (whatever orbax raised, the reason is one line)
            raise self._save_failed(step, e) from None
        if saved:
            self._unsealed = step
        return saved

    def check_for_errors(self) -> None:
        """Raises RunStopped at once when a background save has failed (for example a full disk)."""
        try:
            self.manager.check_for_errors()
        except Exception as e:  # noqa: BLE001
            raise self._save_failed(self._unsealed, e) from None

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """Restores ``step`` into the shardings of ``abstract_state`` (ShapeDtypeStructs with
        shardings). Raises DamagedCheckpoint when its files are damaged, CheckpointError when it
        belongs to a different model or optimizer."""
        self.wait()
        step_dir = os.path.join(self.directory, str(step))
        problem = checksums.verify(step_dir)
        if problem:
            raise DamagedCheckpoint(problem)
        self._check_shapes(step, abstract_state)
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                  data=ocp.args.JsonRestore())
        try:
            restored = self.manager.restore(step, args=args)
        except Exception as e:  # noqa: BLE001 (the shapes fit, so the files are at fault)
            raise DamagedCheckpoint(f"cannot be read back ({_root_cause(e)})") from None
        return restored["state"], restored["data"]

    def restore_latest(self, abstract_state: Any) -> Optional[tuple[Any, dict, int]]:
        """The newest sound checkpoint as (state, data state, step), moving damaged ones aside;
        None when there is none."""
        while (step := self.latest_step()) is not None:
            try:
                state, data = self.restore(step, abstract_state)
                return state, data, step
            except DamagedCheckpoint as e:
                self._move_aside(step, str(e))
        return None

    def wait(self) -> None:
        """Until the last save is written and sealed with its checksums."""
        self._finish_previous_save()
        self._finish_sealing()

    def close(self, raise_errors: bool = True) -> Optional[RunStopped]:
        """Finishes the save in flight and its checksums. With ``raise_errors=False`` (closing
        while another error is being reported) a failed save is returned instead."""
        try:
            self.wait()
        except RunStopped as e:
            if raise_errors:
                raise
            return e
        finally:
            self.manager.close()
            self._sealer.shutdown(wait=True)
        return None

    # -- internals ---------------------------------------------------------------------------

    def _finish_previous_save(self) -> None:
        """Waits for the save in flight, then writes its checksums (in the background: hashing a
        large checkpoint need not hold up training)."""
        try:
            self.manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            raise self._save_failed(self._unsealed, e) from None
        self._finish_sealing()
        if self._unsealed is not None and jax.process_index() == 0:
            step_dir = os.path.join(self.directory, str(self._unsealed))
            self._sealing, self._sealing_step = self._sealer.submit(checksums.seal, step_dir), self._unsealed
        self._unsealed = None

    def _finish_sealing(self) -> None:
        if self._sealing is not None:
            sealing, self._sealing = self._sealing, None
            try:
                sealing.result()
            except OSError as e:
                raise self._save_failed(self._sealing_step, e) from None

    def _check_shapes(self, step: int, abstract_state: Any) -> None:
        try:
            metadata = self.manager.item_metadata(step)["state"]
            saved = _shape_counts(getattr(metadata, "tree", metadata))
        except Exception as e:  # noqa: BLE001
            raise DamagedCheckpoint(f"its metadata cannot be read ({_root_cause(e)})") from None
        wanted = _shape_counts(abstract_state)
        if saved != wanted:
            raise CheckpointError(
                f"the checkpoint at step {step} in {self.directory} does not fit the configured "
                f"model/optimizer ({_difference(saved, wanted)}). Use a new --workdir, or restore "
                f"the configuration it was trained with (runs saved before the spike guard: "
                f"--config.train.spike_skip=False); nothing was changed.")

    def _move_aside(self, step: int, problem: str) -> None:
        source = os.path.join(self.directory, str(step))
        aside = os.path.join(os.path.dirname(self.directory), "checkpoints.bad",
                             f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
        if jax.process_index() == 0:
            os.makedirs(os.path.dirname(aside), exist_ok=True)
            shutil.move(source, aside)
            print(f"checkpoint step {step} {problem}: moved aside to {aside}; using the one "
                  f"before it", flush=True)
        _barrier(f"moved-aside-{step}")
        self.manager.reload()

    def _save_failed(self, step: Optional[int], error: BaseException) -> RunStopped:
        self._unsealed = None  # the failed step has nothing to seal
        previous = [s for s in self.manager.all_steps() if s != step]
        kept = f"step {max(previous)} is intact" if previous else "no earlier checkpoint exists"
        which = f"at step {step} " if step is not None else ""
        return RunStopped(f"the checkpoint {which}could not be written in {self.directory} "
                          f"({_root_cause(error)}); {kept}. Free space or fix the directory, "
                          f"then run again to resume.")


def _shape_counts(tree: Any) -> Counter:
    """How many arrays of each (shape, dtype) a state holds: enough to tell another model or
    optimizer from this one without matching orbax's names to pytree paths."""
    leaves = jax.tree.leaves(tree, is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"))
    return Counter((tuple(x.shape), str(x.dtype)) for x in leaves if hasattr(x, "shape"))


def _difference(saved: Counter, wanted: Counter) -> str:
    extra = list((saved - wanted).elements())[:3]
    missing = list((wanted - saved).elements())[:3]
    return (f"{sum(saved.values())} arrays saved, {sum(wanted.values())} configured; saved "
            f"only: {extra or 'none'}; configured only: {missing or 'none'}")


def _root_cause(error: BaseException) -> str:
    """The operating system's reason (a full disk, a permission) where there is one, else the
    error itself, on one line. Orbax's background writes (TensorStore) report an OS error as a
    ValueError that carries ``os_error_code='28'`` in its text."""
    seen, cause = set(), error
    chain = []
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    for item in chain:
        if isinstance(item, OSError) and item.strerror:
            where = f": {item.filename}" if item.filename else ""
            return f"{item.strerror}{where}"
    for item in chain:
        code = re.search(r"os_error_code='?(\d+)", str(item))
        if code:
            return f"{os.strerror(int(code.group(1)))} (errno {code.group(1)})"
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:300]}"


class _QuietOrbaxFailures(logging.Filter):
    """Orbax logs a failed background save, with tracebacks, from each of its threads before
    the error reaches the Checkpointer; the Checkpointer reports it once, as one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        if f"{os.sep}orbax{os.sep}" in record.pathname:
            return False
        # asyncio's note on each write task of the failed save that nobody awaited any more
        return not (record.name == "asyncio" and "orbax" in record.getMessage())


_quiet = _QuietOrbaxFailures()


def _ignore_writes_finishing_after_a_failed_save(previous_hook):
    """After one array of a save fails, orbax closes its event loop while TensorStore still
    finishes the other writes; each then reports 'Event loop is closed' as an unraisable error,
    a traceback apiece. The failure itself is reported by the Checkpointer."""
    def hook(unraisable):
        value = unraisable.exc_value
        if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
            return
        previous_hook(unraisable)
    hook.filters_closed_loops = True
    return hook


def _report_failed_saves_once() -> None:
    """Silences orbax's and asyncio's own reports of a failed save (the Checkpointer reports it
    as one line). Installed by the first Checkpointer; installing again changes nothing."""
    for name in ("absl", "orbax", "asyncio"):
        logging.getLogger(name).addFilter(_quiet)  # adding the same filter twice is a no-op
    if not getattr(sys.unraisablehook, "filters_closed_loops", False):
        sys.unraisablehook = _ignore_writes_finishing_after_a_failed_save(sys.unraisablehook)


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)
