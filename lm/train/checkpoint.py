"""Checkpoints with orbax: every K steps and at the end, keep N, resume from the latest.

Orbax writes each step into a temporary directory and renames it when complete, so a crash
mid-save leaves the previous checkpoint as the latest loadable one. The data iterator's position
is saved next to the train state (as JSON), so a resumed run sees exactly the batches that an
uninterrupted run would have seen.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used (e.g. it belongs to a different model); names the fix."""


class Checkpointer:
    def __init__(self, directory: str, keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_state: dict, force: bool = False) -> bool:
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  data=ocp.args.JsonSave(data_state))
        return self.manager.save(step, args=args, force=force)

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """Restores into the shardings of ``abstract_state`` (ShapeDtypeStructs with shardings)."""
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                  data=ocp.args.JsonRestore())
        try:
            restored = self.manager.restore(step, args=args)
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(
                f"the checkpoint at step {step} in {self.directory} does not fit the configured "
                f"model/optimizer ({type(e).__name__}: {str(e)[:300]}). Use a new --workdir, or "
                f"restore the configuration it was trained with; nothing was changed.") from None
        return restored["state"], restored["data"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
