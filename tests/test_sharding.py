"""Sharded == unsharded: one step's loss and gradients on 8 fake CPU devices (data, fsdp, tensor)."""
import jax
import numpy as np
import pytest

from lm.parallel.axes import axis_rules
from lm.data.loader import to_global
from lm.train.loop import Trainer
from lm.train.step import loss_sums
from tests.helpers import small_config


def _loss_and_grads(trainer: Trainer, batch):
    state = trainer.init_state()
    gbatch = to_global(batch, trainer.batch_sharding)

    def fn(params, b):
        with axis_rules(trainer.mesh, trainer.rules):
            (total, (ce, _)), grads = jax.value_and_grad(
                lambda p: loss_sums(trainer.graphdef, p, b, 0.0), has_aux=True)(params)
        return ce, grads
    jitted = jax.jit(fn, in_shardings=(trainer.shardings.params, trainer.batch_sharding),
                     out_shardings=None)
    return jax.device_get(jitted(state.params, gbatch))


def _batch(config):
    from lm.data import pipeline
    return next(pipeline.make_train_iterator(pipeline.DataConfig.from_config(config.data), 0))


def _assert_close(a, b, rtol):
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
        scale = max(np.abs(y).max(), 1e-12)
        err = np.abs(np.asarray(x) - np.asarray(y)).max() / scale
        assert err <= rtol, f"{jax.tree_util.keystr(path)}: relative error {err:.2e} > {rtol}"


@pytest.mark.parametrize("mesh", [dict(data=2, fsdp=2, tensor=2), dict(data=1, fsdp=8, tensor=1),
                                  dict(data=1, fsdp=1, tensor=8)])
def test_sharded_loss_and_grads_match_one_device(mesh):
    config = small_config(num_kv_heads=0, num_heads=8)
    batch = _batch(config)
    ref_loss, ref_grads = _loss_and_grads(Trainer(config, "", jax.devices()[:1]), batch)
    config.mesh.update(mesh)
    trainer = Trainer(config, "", jax.devices())
    assert trainer.mesh.devices.size == 8
    loss, grads = _loss_and_grads(trainer, batch)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    _assert_close(grads, ref_grads, 1e-5)


def test_parameters_are_actually_sharded():
    config = small_config()
    config.mesh.update(dict(data=2, fsdp=2, tensor=2))
    trainer = Trainer(config, "", jax.devices())
    state = trainer.init_state()
    query = state.params["blocks"][0]["attention"]["query"]["kernel"]  # [embed, heads, kv]
    assert query.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor", None)
    assert query.addressable_shards[0].data.shape == (16, 2, 8)


def test_fsdp_shards_parameters_and_optimizer_state_memory(capsys):
    """Per-device parameter + optimizer-state bytes with fsdp=8 are <= 1/6 of one device's."""
    def argument_bytes(devices, **mesh):
        config = small_config(d_model=256, num_heads=8, num_kv_heads=0, num_layers=2)
        config.mesh.update(mesh)
        trainer = Trainer(config, "", devices)
        state_shapes = trainer.abstract_state
        batch = {k: jax.ShapeDtypeStruct((8, 16), dtype, sharding=trainer.batch_sharding)
                 for k, dtype in [("inputs", np.int32), ("targets", np.int32), ("weights", np.float32),
                                  ("segment_ids", np.int32), ("positions", np.int32)]}
        compiled = trainer.train_step.lower(state_shapes, batch).compile()
        batch_bytes = sum(8 * 16 * 4 for _ in batch) // trainer.mesh.devices.size
        return compiled.memory_analysis().argument_size_in_bytes - batch_bytes
    one = argument_bytes(jax.devices()[:1])
    sharded = argument_bytes(jax.devices(), data=1, fsdp=8)
    print(f"parameters + optimizer state per device: 1 device {one:,} B, fsdp=8 {sharded:,} B "
          f"(ratio {one / sharded:.2f})")
    assert sharded <= one / 6
