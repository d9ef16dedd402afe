"""Run: one way to build and to load a run; parameters restored sharded, no optimizer; the
workdir's config.json is the source of truth for the model; one mode table."""
import json

import jax
import numpy as np
import pytest

from lm.configlib import ConfigError
from lm.train import loop
from lm.train.checkpoint import Checkpointer
from lm.train.run import Run
from tests.helpers import small_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 4-step run trained with an override (RoPE) the experiment file does not have."""
    workdir = str(tmp_path_factory.mktemp("run") / "rope")
    config = small_config(steps=4, positions="rope")
    loop.pretrain(config, workdir, jax.devices()[:1])
    return workdir


def _mesh(config, **axes):
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = (axes.get(a, 1) for a in ("data", "fsdp", "tensor"))
    return config


def test_restore_reads_the_parameters_sharded_without_an_optimizer(trained, monkeypatch):
    import lm.train.optimizer
    import lm.train.trainer
    for module in (lm.train.optimizer, lm.train.trainer):
        monkeypatch.setattr(module, "make_optimizer", _refuse)
    use = _mesh(small_config(), data=2, fsdp=2, tensor=2)
    run = Run.from_workdir(trained, use_time=use)
    params, step = run.restore()
    assert step == 4 and dict(run.mesh.shape) == {"pipeline": 1, "data": 2, "fsdp": 2, "sequence": 1,
                                                  "tensor": 2}
    monkeypatch.undo()

    # The reference: the whole train state restored on one device.
    trainer = loop.Trainer(Run.from_workdir(trained, devices=jax.devices()[:1]).config, trained,
                           jax.devices()[:1])
    checkpointer = Checkpointer(f"{trained}/checkpoints", async_save=False)
    state, _ = checkpointer.restore(4, trainer.abstract_state)
    checkpointer.close()
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    _assert_split(params, run.param_shardings)


def _refuse(*args, **kwargs):
    raise AssertionError("loading parameters must not build an optimizer")


def _assert_split(params, shardings):
    """Every parameter lives where its sharding says, each device holding only its share; the
    attention projections [embed, heads, kv] are split over fsdp (embed) and tensor (heads)."""
    for array, sharding in zip(jax.tree.leaves(params), jax.tree.leaves(shardings)):
        assert array.sharding == sharding
        assert array.addressable_shards[0].data.shape == sharding.shard_shape(array.shape)
    query = params["blocks"][0]["attention"]["query"]["kernel"]
    embed, heads, kv = query.shape
    assert query.addressable_shards[0].data.shape == (embed // 2, heads // 2, kv)


def test_the_workdir_config_gives_the_model_and_the_command_line_the_use_time(trained):
    use = small_config(arch="lstm")  # another model on the command line: the saved one is used
    use.eval.batch_size = 3
    run = Run.from_workdir(trained, use_time=use, devices=jax.devices()[:1])
    assert run.exp.model.positions == "rope" and run.exp.model.arch == "decoder"
    assert run.config.eval.batch_size == 3
    with pytest.raises(ConfigError, match=r"--config.model.d_model.*rope/config.json.*saved 32"):
        Run.from_workdir(trained, {"model.d_model": 64}, use_time=use, devices=jax.devices()[:1])
    same = Run.from_workdir(trained, {"model.positions": "rope", "data.seq_len": 8}, use_time=use,
                            devices=jax.devices()[:1])
    assert same.exp.data.seq_len == 8  # a shorter evaluation context may differ


def test_a_saved_mesh_that_does_not_fit_falls_back_to_data_parallel(trained, tmp_path):
    config = json.loads(open(f"{trained}/config.json").read())
    assert config["mesh"]["data"] == 1
    run = Run.from_workdir(trained, devices=jax.devices()[:4])  # data=1 fits only one device
    assert dict(run.mesh.shape)["data"] == 4


def test_a_workdir_without_config_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="config.json not found.*not a training workdir"):
        Run.from_workdir(str(tmp_path))


def test_one_mode_table_for_launch_and_sweeps():
    from lm import modes
    from lm.sweep import registry
    assert registry.RUNNERS is modes.MODES
    assert set(modes.MODES) >= {"pretrain", "sft", "eval", "sample", "compile", "ngram"}
    for name in modes.MODES:
        entry = modes.mode(name)
        assert callable(entry.run) and callable(entry.validate)
    with pytest.raises(ConfigError, match="'evl'.*Did you mean 'eval'"):
        modes.mode("evl")


def test_peft_steps_differentiate_only_the_trainable_parameters():
    """With a LoRA mask the step's gradient of a frozen weight is never computed: the jaxpr of
    the step has fewer dot products than full fine-tuning's, and the update equals it on the
    trainable leaves."""
    from lm.train.trainer import Trainer
    import ml_collections
    config = small_config(steps=2)
    config.peft = ml_collections.ConfigDict({"method": "lora", "lora_rank": 4})
    trainer = Trainer(config, "", jax.devices()[:1])
    full = trainer.optimizer
    state = trainer.init_state()
    batch = next(trainer.train_iterator())
    masked_jaxpr = str(jax.make_jaxpr(trainer.train_step)(state, batch))
    from lm.train.step import StepConfig, make_train_step
    everything = make_train_step(trainer.graphdef, full, trainer.schedule, StepConfig())
    full_jaxpr = str(jax.make_jaxpr(everything)(state, batch))
    assert masked_jaxpr.count("dot_general") < full_jaxpr.count("dot_general")
    new_state, _ = trainer.train_step(state, batch)
    reference, _ = jax.jit(everything)(trainer.init_state(), batch)
    for got, want in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(reference.params)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-7)
