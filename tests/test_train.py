"""Training loop: resume equals uninterrupted, checkpoints are atomic, bad input fails clearly."""
import json
import os

import jax
import numpy as np
import pytest

from lm.configlib import ConfigError
from lm.data import pipeline
from lm.train import loop
from lm.train.checkpoint import CheckpointError, Checkpointer
from lm.train.experiment import Experiment
from lm.train.metrics import read_metrics
from tests.helpers import small_config


def _params(workdir, config):
    trainer = loop.Trainer(config, workdir, jax.devices()[:1])
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    state, data_state = ckpt.restore(ckpt.latest_step(), trainer.abstract_state)
    ckpt.close()
    return jax.device_get(state.params), data_state


def _interrupting(make_iterator, after: int):
    """make_train_iterator whose iterator raises (like a killed job) on batch ``after + 1``."""
    def make(*args, **kwargs):
        it = make_iterator(*args, **kwargs)
        original, served = it.__next__, [0]

        class Interrupted:
            def __iter__(self):
                return self

            def __next__(self):
                served[0] += 1
                if served[0] > after:
                    raise KeyboardInterrupt("simulated crash")
                return original()

            def get_state(self):
                return it.get_state()

            def set_state(self, state):
                it.set_state(state)
        return Interrupted()
    return make


@pytest.mark.parametrize("backend", [pytest.param("synthetic", marks=pytest.mark.slow), "array"])
def test_resumed_run_equals_uninterrupted(tmp_path, monkeypatch, backend):
    config = small_config(steps=8, dropout=0.1)
    config.data.backend = backend
    if backend == "array":
        config.model.vocab_size = 0  # from the character vocabulary
    config.train.checkpoint_every = 4
    devices = jax.devices()[:1]
    straight = str(tmp_path / "straight")
    final = loop.pretrain(config, straight, devices)

    resumed = str(tmp_path / "resumed")
    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "make_train_iterator",
                      _interrupting(pipeline.make_train_iterator, after=6))
        with pytest.raises(KeyboardInterrupt):
            loop.pretrain(config, resumed, devices)
    assert Checkpointer(os.path.join(resumed, "checkpoints")).latest_step() == 4
    final_resumed = loop.pretrain(config, resumed, devices)

    assert final_resumed["train/loss"] == final["train/loss"]
    a, data_a = _params(straight, config)
    b, data_b = _params(resumed, config)
    assert data_a == data_b
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)  # bitwise on CPU


def test_metrics_config_and_eval_mode(tmp_path):
    config = small_config(steps=4)
    workdir = str(tmp_path)
    loop.pretrain(config, workdir, jax.devices()[:1])
    rows = read_metrics(workdir)
    keys = set().union(*rows)
    for key in ("train/loss", "eval/loss", "train/tokens_per_sec", "train/mfu", "train/grad_norm",
                "train/lr", "step"):
        assert key in keys, key
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3, 4]
    saved = json.load(open(os.path.join(workdir, "config.json")))
    assert saved["model"]["vocab_size"] == 64 and saved["train"]["steps"] == 4
    assert os.listdir(os.path.join(workdir, "tensorboard"))
    scores = loop.evaluate_checkpoint(config, workdir, devices=jax.devices()[:1])
    last_eval = [r for r in rows if "eval/loss" in r][-1]
    assert scores["step"] == 4
    np.testing.assert_allclose(scores["eval/loss"], last_eval["eval/loss"], rtol=1e-6)
    np.testing.assert_allclose(scores["eval/perplexity"], np.exp(scores["eval/loss"]), rtol=1e-6)


def test_learning_rate_schedule_in_metrics(tmp_path):
    config = small_config(steps=6)
    config.optimizer.update(dict(lr=1e-2, min_lr=1e-3, warmup_steps=2))
    loop.pretrain(config, str(tmp_path), jax.devices()[:1])
    lrs = [r["train/lr"] for r in read_metrics(str(tmp_path)) if "train/lr" in r]
    # Warm-up (step+1)/(warmup+1) * lr, then cosine from lr at step 2 to min_lr at step 6.
    expected = [1e-2 / 3, 2e-2 / 3] + [1e-3 + 0.5 * (1 + np.cos(np.pi * k / 4)) * 9e-3 for k in range(4)]
    np.testing.assert_allclose(lrs, expected, rtol=1e-5)


def test_interrupted_save_leaves_previous_checkpoint_loadable(tmp_path):
    config = small_config(steps=4)
    workdir = str(tmp_path)
    loop.pretrain(config, workdir, jax.devices()[:1])
    ckpt_dir = os.path.join(workdir, "checkpoints")
    # What a crash in the middle of writing step 8 leaves behind: orbax's temporary directory.
    partial = os.path.join(ckpt_dir, "8.orbax-checkpoint-tmp-1234567890")
    os.makedirs(os.path.join(partial, "state"))
    with open(os.path.join(partial, "state", "partial_write"), "wb") as f:
        f.write(b"\0" * 100)
    assert Checkpointer(ckpt_dir).latest_step() == 4
    params, _ = _params(workdir, config)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def _listing(root):
    return sorted((os.path.relpath(os.path.join(d, f), root), os.path.getsize(os.path.join(d, f)))
                  for d, _, files in os.walk(root) for f in files)


def test_incompatible_checkpoint_is_refused_and_nothing_is_lost(tmp_path):
    config = small_config(steps=2)
    workdir = str(tmp_path)
    loop.pretrain(config, workdir, jax.devices()[:1])
    before = _listing(workdir)
    other = small_config(steps=4, d_model=64)
    with pytest.raises(CheckpointError, match="different model.*model.d_model: saved 32, now 64"):
        loop.pretrain(other, workdir, jax.devices()[:1])
    assert _listing(workdir) == before


def test_config_errors_name_the_field_and_fix():
    config = small_config()
    config.model.unlock() if hasattr(config.model, "unlock") else None
    config.model.num_layer = 3
    with pytest.raises(ConfigError, match=r"config.model.'num_layer'.*Did you mean 'config.model.num_layers'"):
        Experiment.from_config(config)

    config = small_config()
    config.mesh.update(dict(data=3))
    with pytest.raises(ConfigError, match="3 devices but 8 are available"):
        loop.Trainer(config, "", jax.devices())

    config = small_config()
    config.mesh.update(dict(data=-1, tensor=3))
    with pytest.raises(ConfigError, match="does not divide the 8 available devices"):
        loop.Trainer(config, "", jax.devices())

    config = small_config()
    config.data.batch_size = 12
    config.mesh.update(dict(data=8))
    with pytest.raises(ConfigError, match="batch_size=12.*batch axes of the mesh.*8 ways.*multiple of 8"):
        loop.Trainer(config, "", jax.devices())

    # Heads that do not divide tensor are replicated there (the one rule for every axis, with a
    # warning; tests/test_config_sections.py), not refused.
    config = small_config(num_heads=4, num_kv_heads=0)
    config.mesh.update(dict(data=1, tensor=8))
    loop.Trainer(config, "", jax.devices())

    config = small_config()
    config.data.seq_len = 15
    config.model.max_len = 16
    config.mesh.update(dict(data=-1, sequence=2))
    with pytest.raises(ConfigError, match="config.data.seq_len=15 is not divisible by config.mesh.sequence=2"):
        loop.Trainer(config, "", jax.devices())

    config = small_config()
    config.mesh.rules = "zero3"
    with pytest.raises(ConfigError, match="config.mesh.rules='zero3' is not one of"):
        loop.Trainer(config, "", jax.devices())


def test_empty_corpus_file_fails_clearly(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    config = small_config()
    config.data.backend = "array"
    config.data.corpus = str(empty)
    config.model.vocab_size = 0
    with pytest.raises(ValueError, match="empty.txt"):
        loop.pretrain(config, str(tmp_path / "run"), jax.devices()[:1])
    assert not os.path.exists(tmp_path / "run" / "checkpoints")


@pytest.mark.parametrize("repeats,microbatches", [(1, 4), pytest.param(2, 4, marks=pytest.mark.slow)])
def test_bubble_fraction_is_logged(tmp_path, repeats, microbatches):
    config = small_config(steps=2, num_layers=8, pipeline_microbatches=microbatches,
                          pipeline_repeats=repeats)
    config.mesh.update(dict(pipeline=4, data=2))
    loop.pretrain(config, str(tmp_path), jax.devices())
    logged = [r["train/bubble_fraction"] for r in read_metrics(str(tmp_path)) if "train/loss" in r]
    stages = 4
    expected = (stages - 1) / (repeats * microbatches + stages - 1)  # 3/7 GPipe, 3/11 circular
    assert len(logged) == 2 and all(abs(x - expected) < 1e-12 for x in logged), logged


def test_pipeline_config_errors_name_the_fields():
    config = small_config(num_layers=6)
    config.mesh.update(dict(pipeline=4, data=2))
    with pytest.raises(ConfigError, match="num_layers=6 is not divisible by pipeline_stages"):
        loop.Trainer(config, "", jax.devices())

    config = small_config(num_layers=8, pipeline_microbatches=2)
    config.mesh.update(dict(pipeline=4, data=2))
    with pytest.raises(ConfigError, match="microbatch count below the stage count"):
        loop.Trainer(config, "", jax.devices())

    config = small_config(num_layers=8, pipeline_microbatches=8)
    config.mesh.update(dict(pipeline=4, data=2))  # 8 rows / 8 microbatches = 1 row, data=2
    with pytest.raises(ConfigError, match=r"pipeline_microbatches=8 splits the 8 rows .*\(2 ways.*"
                                          r"pipeline_microbatches in \[4\] or config.data.batch_size "
                                          r"a multiple of 16"):
        loop.Trainer(config, "", jax.devices())

    # The advice can be followed: batch 12 on fsdp=4, pipeline=2 (2 microbatches of 6 rows).
    config = small_config(num_layers=4)
    config.data.batch_size = 12
    config.mesh.update(dict(data=1, fsdp=4, pipeline=2))
    with pytest.raises(ConfigError, match=r"pipeline_microbatches in \[3\] or "
                                          r"config.data.batch_size a multiple of 8 \(e.g. 16\)"):
        loop.Trainer(config, "", jax.devices())
    for fix in ({"model.pipeline_microbatches": 3}, {"data.batch_size": 16}):
        fixed = small_config(num_layers=4)
        fixed.data.batch_size = 12
        fixed.mesh.update(dict(data=1, fsdp=4, pipeline=2))
        section, field = next(iter(fix)).split(".")
        fixed[section][field] = next(iter(fix.values()))
        loop.Trainer(fixed, "", jax.devices())


def test_mixture_reports_validation_loss_per_source(tmp_path):
    config = small_config(steps=2)
    config.data.update(dict(backend="array", mixture="gutenberg", eval_batches=1))
    config.model.vocab_size = 0
    loop.pretrain(config, str(tmp_path), jax.devices()[:1])
    row = [r for r in read_metrics(str(tmp_path)) if "eval/loss" in r][-1]
    sources = ("shakespeare", "milton", "britannica")
    per_source = [row[f"eval/{name}/loss"] for name in sources]
    # Every source has the same number of scored tokens, so the total is their mean.
    np.testing.assert_allclose(row["eval/loss"], np.mean(per_source), rtol=1e-6)
    assert len(set(per_source)) == 3


def test_mixture_reports_validation_loss_per_domain(tmp_path):
    config = small_config(steps=2)
    config.data.update(dict(backend="array", eval_batches=1,
                            mixture="shakespeare@general,milton@general,britannica@specialized"))
    config.model.vocab_size = 0
    loop.pretrain(config, str(tmp_path), jax.devices()[:1])
    row = [r for r in read_metrics(str(tmp_path)) if "eval/loss" in r][-1]
    # Equal scored tokens per source: a domain's loss is the mean of its sources'.
    np.testing.assert_allclose(row["eval/domain/general/loss"],
                               np.mean([row["eval/shakespeare/loss"], row["eval/milton/loss"]]), rtol=1e-6)
    assert row["eval/domain/specialized/loss"] == row["eval/britannica/loss"]
