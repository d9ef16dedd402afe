"""Damaged checkpoints are detected and set aside, the run resumes from the one before; SIGTERM
saves and the resumed run equals the uninterrupted one bit for bit."""
import os
import shlex
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from lm.data import pipeline
from lm.train import checksums, loop
from lm.train.checkpoint import Checkpointer
from tests.helpers import ROOT, small_config

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
    before = signal.getsignal(signal.SIGTERM)
    stopped = _stopped_by_sigterm_at_batch(workdir, 6, monkeypatch)
    assert stopped["stopped_by"] == "SIGTERM" and stopped["step"] == 6
    assert "stopped by SIGTERM after step 6: checkpoint saved" in capsys.readouterr().out
    assert signal.getsignal(signal.SIGTERM) is before  # the handler was put back
    assert Checkpointer(os.path.join(workdir, "checkpoints")).latest_step() == 6

    loop.pretrain(_config(12), workdir, DEVICES)
    _assert_bitwise_equal(_final_params(workdir, 12), uninterrupted)


def _can_mount_tmpfs() -> bool:
    """Whether this machine lets a user namespace mount a tmpfs (containers often forbid it)."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                            "mount -t tmpfs -o size=64k tmpfs /mnt"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.slow
def test_a_full_disk_during_a_background_save_stops_in_one_line_with_the_previous_kept(tmp_path):
    if not _can_mount_tmpfs():  # probed here, not at collection, so other runs do not pay for it
        pytest.skip("needs unprivileged user and mount namespaces for a small tmpfs")
    # A tmpfs that holds the first checkpoint (about 430 KB) but not a second one.
    args = ["--config=experiments/shakespeare_char.py:smoke", "--config.data.backend=synthetic",
            "--config.data.synthetic_vocab_size=64", "--config.model.vocab_size=64",
            "--config.data.batch_size=8", "--config.model.num_layers=2",
            "--config.model.d_model=32", "--config.train.steps=12", "--config.train.eval_every=12",
            "--config.train.checkpoint_every=4", "--config.train.sample_tokens=0",
            "--config.train.progress=False", "--config.train.async_checkpoint=True"]
    mount, kept = tmp_path / "small_disk", tmp_path / "kept"
    mount.mkdir()
    launch = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "launch.main", *args,
                                                f"--workdir={mount}/run"])
    script = (f"mount -t tmpfs -o size=700k tmpfs {mount} && {launch}; code=$?; "
              f"cp -a {mount}/run {kept}; exit $code")
    env = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": ROOT}
    done = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr[-3000:]
    assert len(errors) == 1 and errors[0].startswith("error: "), errors
    assert "No space left on device" in errors[0] and "step 4 is intact" in errors[0]
    checkpointer = Checkpointer(os.path.join(kept, "checkpoints"), async_save=False)
    assert checkpointer.latest_step() == 4
    assert checksums.verify(os.path.join(kept, "checkpoints", "4")) is None
    checkpointer.close()


def test_one_sigint_asks_for_a_stop_at_the_step_boundary_and_a_second_interrupts_at_once():
    from lm.train.preempt import StopRequests
    before = signal.getsignal(signal.SIGINT)
    with StopRequests() as stop:
        assert not stop.reached(1)
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.reached(2) and stop.signal_name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


def test_using_a_run_passes_over_a_damaged_latest_step_and_moves_nothing(tmp_path, capsys,
                                                                      monkeypatch):
    from lm.train.checkpoint import CheckpointError
    from lm.train.run import Run
    workdir = str(tmp_path)
    _stopped_by_sigterm_at_batch(workdir, 8, monkeypatch)
    _damage(_largest_array_file(os.path.join(workdir, "checkpoints", "8")), "flip")
    capsys.readouterr()
    run = Run(_config(12), workdir, DEVICES)
    _, step = run.restore()
    assert step == 4
    assert "checkpoint step 8" in capsys.readouterr().out
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["4", "8"]
    with pytest.raises(CheckpointError, match="step 8 .*CRC-32"):
        run.restore(8)
