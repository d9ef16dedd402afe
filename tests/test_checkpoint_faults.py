"""Damaged checkpoints are detected and set aside, the run resumes from the one before; SIGTERM
saves and the resumed run equals the uninterrupted one bit for bit."""
import os
import signal

import jax
import numpy as np
import pytest

from lm.data import pipeline
from lm.train import checksums, loop
from lm.train.checkpoint import Checkpointer
from tests.helpers import small_config

DEVICES = jax.devices()[:1]


def _config(steps: int):
    config = small_config(steps=steps)
    config.train.checkpoint_every = 4
    config.data.prefetch = 0  # the signal test counts the batches served
    return config


def _final_params(workdir: str, steps: int):
    trainer = loop.Trainer(_config(steps), workdir, DEVICES)
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    assert checkpointer.latest_step() == steps
    state, _ = checkpointer.restore(steps, trainer.abstract_state)
    checkpointer.close()
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state))]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("uninterrupted"))
    loop.pretrain(_config(12), workdir, DEVICES)
    return _final_params(workdir, 12)


def _assert_bitwise_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes()


def _largest_array_file(step_dir: str) -> str:
    files = [os.path.join(root, name) for root, _, names in os.walk(os.path.join(step_dir, "state"))
             for name in names]
    return max(files, key=os.path.getsize)


def _damage(path: str, how: str) -> None:
    with open(path, "rb") as f:
        data = bytearray(f.read())
    if how == "truncate":
        data = data[: len(data) // 2]
    elif how == "zero":
        data = bytearray(len(data))
    else:  # one flipped bit in the middle of the file
        data[len(data) // 2] ^= 0x01
    with open(path, "r+b") as f:
        f.truncate(0)
        f.write(data)


@pytest.mark.parametrize("how,sealed", [("truncate", True), ("zero", True), ("flip", True),
                                        ("truncate", False)])
def test_a_damaged_latest_checkpoint_is_moved_aside_and_the_run_resumes_from_the_previous(
        tmp_path, capsys, monkeypatch, uninterrupted, how, sealed):
    workdir = str(tmp_path)
    _stopped_by_sigterm_at_batch(workdir, 8, monkeypatch)
    step_dir = os.path.join(workdir, "checkpoints", "8")
    if not sealed:  # the process died between orbax's rename and the checksums
        os.remove(os.path.join(step_dir, checksums.RECORD))
    _damage(_largest_array_file(step_dir), how)
    capsys.readouterr()

    loop.pretrain(_config(12), workdir, DEVICES)
    lines = [line for line in capsys.readouterr().out.splitlines() if "moved aside" in line]
    assert len(lines) == 1 and lines[0].startswith("checkpoint step 8 "), lines
    expected = "cannot be read back" if not sealed else "CRC-32" if how != "truncate" else "bytes"
    assert expected in lines[0]
    aside = os.listdir(os.path.join(workdir, "checkpoints.bad"))
    assert len(aside) == 1 and aside[0].startswith("8-")  # kept, not deleted
    _assert_bitwise_equal(_final_params(workdir, 12), uninterrupted)


def _stopped_by_sigterm_at_batch(workdir: str, batch: int, monkeypatch) -> dict:
    """The 12-step run, sent SIGTERM while it prepares step ``batch``'s batch (as a scheduler's
    notice would arrive)."""
    make = pipeline.make_train_iterator

    def terminating(*args, **kwargs):
        inner = make(*args, **kwargs)

        class Iterator:
            served = 0

            def __iter__(self):
                return self

            def __next__(self):
                self.served += 1
                if self.served == batch:
                    os.kill(os.getpid(), signal.SIGTERM)
                return next(inner)

            def get_state(self):
                return inner.get_state()

            def set_state(self, state):
                inner.set_state(state)
        return Iterator()

    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "make_train_iterator", terminating)
        return loop.pretrain(_config(12), workdir, DEVICES)


def test_sigterm_saves_after_the_step_and_the_resumed_run_equals_the_uninterrupted_one(
        tmp_path, monkeypatch, capsys, uninterrupted):
    workdir = str(tmp_path)
    stopped = _stopped_by_sigterm_at_batch(workdir, 6, monkeypatch)
    assert stopped["stopped_by"] == "SIGTERM" and stopped["step"] == 6
    assert "stopped by SIGTERM after step 6: checkpoint saved" in capsys.readouterr().out
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler was put back
    assert Checkpointer(os.path.join(workdir, "checkpoints")).latest_step() == 6

    loop.pretrain(_config(12), workdir, DEVICES)
    _assert_bitwise_equal(_final_params(workdir, 12), uninterrupted)
