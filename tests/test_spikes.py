"""Bad steps are skipped inside the jitted step; a stretch of them rolls back and skips data; a run
that keeps diverging stops with its last finite checkpoint kept."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.data import pipeline
from lm.data.loader import to_global
from lm.train import loop, spikes
from lm.train.checkpoint import Checkpointer
from lm.train.errors import RunStopped
from tests.helpers import small_config


def _memorising_config(steps: int = 60):
    """One batch seen again and again drives the loss near 0, so a batch with shifted targets
    has about 100 times the loss of the window: a spike that real training produced."""
    config = small_config(steps=steps)
    config.optimizer.lr = 1e-2
    config.optimizer.warmup_steps = 0
    config.train.spike_window = 16
    return config


def _batch(config):
    return next(pipeline.make_train_iterator(pipeline.DataConfig.from_config(config.data), 0))


def _shifted(batch):
    return {**batch, "targets": (batch["targets"] + 1) % 64}


def _host(tree):
    return jax.tree.map(np.asarray, jax.device_get(tree))


def _assert_bitwise_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes()


def test_zscore_is_the_distance_from_the_window_mean_in_standard_deviations():
    history = jnp.array([[1.0, 2.0, 3.0, 4.0, 99.0, 99.0],  # the last two are not filled yet
                         [2.0, 2.0, 4.0, 4.0, 99.0, 99.0]])
    z = spikes._zscores(jnp.array([10.0, 1.0]), history, jnp.int32(4))
    np.testing.assert_allclose(z, [(10.0 - 2.5) / np.std([1.0, 2.0, 3.0, 4.0]), (1.0 - 3.0) / 1.0],
                               rtol=1e-6)


def test_a_batch_with_100x_the_loss_is_skipped_and_changes_nothing():
    config = _memorising_config(steps=100)
    trainer = loop.Trainer(config, "", jax.devices()[:1])
    batch = _batch(config)
    state = trainer.init_state()
    for _ in range(60):
        state, metrics = trainer.train_step(state, to_global(batch, trainer.batch_sharding))
    assert int(metrics["train/skips"]) == 0
    window_loss = float(metrics["train/loss"])
    before = _host(state)

    state, metrics = trainer.train_step(state, to_global(_shifted(batch), trainer.batch_sharding))
    assert float(metrics["train/loss"]) >= 100 * window_loss
    assert int(metrics["train/skip_reason"]) == spikes.LOSS_SPIKE
    after = _host(state)
    _assert_bitwise_equal(after.params, before.params)
    _assert_bitwise_equal(after.opt_state.inner, before.opt_state.inner)
    assert int(after.step) == int(before.step) + 1
    assert int(after.opt_state.skipped) == 1

    state, metrics = trainer.train_step(state, to_global(batch, trainer.batch_sharding))
    assert int(metrics["train/skipped"]) == 0 and int(metrics["train/consecutive_skips"]) == 0


def test_a_non_finite_loss_is_skipped_before_the_window_fills():
    config = _memorising_config()
    trainer = loop.Trainer(config, "", jax.devices()[:1])
    batch = _batch(config)
    state = trainer.init_state()
    before = _host(state)
    weights = np.array(batch["weights"], np.float32)
    weights[0, 0] = np.nan
    state, metrics = trainer.train_step(state, to_global({**batch, "weights": weights},
                                                         trainer.batch_sharding))
    assert not np.isfinite(float(metrics["train/loss"]))
    assert int(metrics["train/skip_reason"]) == spikes.NON_FINITE
    _assert_bitwise_equal(_host(state).params, before.params)


class _Served:
    """A training iterator that serves one batch again and again and shifted-target batches at
    the given 1-based positions, with the real iterator's position as its state."""

    def __init__(self, batch, bad: range):
        self.batch = batch
        self.bad, self.served = bad, 0

    def __iter__(self):
        return self

    def __next__(self):
        self.served += 1
        return _shifted(self.batch) if self.served in self.bad else self.batch

    def get_state(self):
        return {"served": self.served}

    def set_state(self, state):
        self.served = state["served"]


def _events(workdir):
    with open(os.path.join(workdir, "spikes.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_a_stretch_of_bad_batches_rolls_back_skips_them_and_ends_finite(tmp_path, monkeypatch):
    config = _memorising_config(steps=60)
    config.train.update(checkpoint_every=10, spike_rollback_after=3, spike_skip_batches=10)
    config.data.prefetch = 0  # count the batches served exactly
    served = [_Served(_batch(config), bad=range(41, 47))]
    monkeypatch.setattr(pipeline, "make_train_iterator", lambda *a, **k: served[0])
    workdir = str(tmp_path)
    final = loop.pretrain(config, workdir, jax.devices()[:1])

    events = _events(workdir)
    assert [e["event"] for e in events] == ["skip", "skip", "skip", "rollback"]
    assert [e["step"] for e in events[:3]] == [41, 42, 43]
    assert all(e["reason"] == "loss spike" for e in events[:3])
    assert events[3]["to_step"] == 40 and events[3]["skipped_batches"] == 10
    # Step 43's decision is read two steps late (lm.train.fit.READ_LAG), so the rollback came
    # after batch 45 was served; then 10 were skipped, training resumed at batch 56, past the bad
    # stretch, and steps 41-60 took 20 more.
    assert served[0].served == 45 + 10 + 20
    # train/skips counts the skips of the steps that stand: the rollback discarded those three.
    assert final["step"] == 60 and final["train/rollbacks"] == 1 and final["train/skips"] == 0
    assert np.isfinite(final["train/loss"]) and final["train/loss"] < 0.5


def test_a_run_that_keeps_diverging_stops_with_its_last_finite_checkpoint(tmp_path):
    config = small_config(steps=60)
    config.optimizer.lr = 1e6
    config.train.update(checkpoint_every=2, spike_window=8, spike_rollback_after=3,
                        spike_skip_batches=2, spike_max_rollbacks=2)
    workdir = str(tmp_path)
    with pytest.raises(RunStopped, match="training diverged") as stopped:
        loop.pretrain(config, workdir, jax.devices()[:1])
    assert "\n" not in str(stopped.value)
    events = _events(workdir)
    assert [e["event"] for e in events].count("rollback") == 2
    assert events[-1]["event"] == "stopped"

    trainer = loop.Trainer(config, workdir, jax.devices()[:1])
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    steps = checkpointer.manager.all_steps()
    assert steps, "the last finite checkpoint must be kept"
    for step in steps:
        state, _ = checkpointer.restore(step, trainer.abstract_state)
        assert all(np.isfinite(x).all() for x in jax.tree.leaves(_host(state.params)))
    checkpointer.close()
    assert f"step {max(steps)}, is kept" in str(stopped.value)
