"""Every layout is the same computation: sharded on 8 fake CPU devices == one device.

For each mesh layout: one step's loss and gradients equal the 1-device run to 1e-5 relative,
and 20 steps of training (AdamW with eps 1e-4, see _config) agree to 1e-4. The 1-device run is
the plain model (a list of layers, no pipeline) for every layout: a pipelined model starts from
the same weights (tests/test_pipeline_init.py), and its stacks are compared layer by layer.
"""
import functools

import jax
import numpy as np
import pytest

from lm.data import pipeline
from lm.data.loader import to_global
from lm.parallel.axes import axis_rules
from lm.train.loop import Trainer
from lm.train.step import loss_sums
from tests.helpers import small_config
from tests.test_pipeline_init import as_list_of_layers

LAYOUTS = {
    "data=8": dict(data=8),
    "fsdp=8": dict(data=1, fsdp=8),
    "tensor=8": dict(data=1, tensor=8),
    "data=2,fsdp=2,tensor=2": dict(data=2, fsdp=2, tensor=2),
    "sequence=2,tensor=2,data=2": dict(data=2, sequence=2, tensor=2),
    "zero1 fsdp=8": dict(data=1, fsdp=8, rules="zero1"),
    "megatron_sp tensor=4,data=2": dict(data=2, tensor=4, rules="megatron_sp"),
    "data_parallel rules, fsdp=4,tensor=2": dict(data=1, fsdp=4, tensor=2, rules="data_parallel"),
    "pipeline=4,data=2 gpipe": dict(pipeline=4, data=2),
    "pipeline=4,data=2 circular": dict(pipeline=4, data=2),
    "pipeline=2,fsdp=2,tensor=2": dict(pipeline=2, data=1, fsdp=2, tensor=2),
    "pipeline=2,fsdp=4": dict(pipeline=2, data=1, fsdp=4),
    "pipeline=2,data=2,tensor=2 + remat + 2 accumulated microbatches": dict(pipeline=2, data=2, tensor=2),
}
# The pipelined models; the plain model with the same number of layers is their reference.
PIPELINE_MODELS = {
    "pipeline=4,data=2 gpipe": dict(pipeline_stages=4, pipeline_microbatches=4, num_layers=8),
    "pipeline=4,data=2 circular": dict(pipeline_stages=4, pipeline_microbatches=4,
                                       pipeline_repeats=2, num_layers=8),
    "pipeline=2,fsdp=2,tensor=2": dict(pipeline_stages=2, pipeline_microbatches=2, num_layers=4),
    "pipeline=2,fsdp=4": dict(pipeline_stages=2, pipeline_microbatches=2, num_layers=4),
    "pipeline=2,data=2,tensor=2 + remat + 2 accumulated microbatches": dict(
        pipeline_stages=2, pipeline_microbatches=2, num_layers=4),
}
# Run-time options that must not change the result (the reference runs without them).
RUN_OPTIONS = {
    "pipeline=2,data=2,tensor=2 + remat + 2 accumulated microbatches": (
        dict(remat="full"), dict(grad_accum_steps=2)),
}
TRAIN_STEPS = 20


def _config(name=""):
    config = small_config(steps=TRAIN_STEPS, num_heads=8, num_kv_heads=0,
                          **PIPELINE_MODELS.get(name, {}))
    # Adam's default eps (1e-8) turns an element whose gradient is rounding noise (1e-6 against
    # a median of 0.3: one of the 8-layer pipelined model's wo kernels) into a full learning-rate
    # step in the noise's direction, so 20 steps would compare rounding, not layouts (1.2e-4 on
    # that element, 6e-7 everywhere else). 1e-4 is still far below every other gradient here.
    config.optimizer.eps = 1e-4
    return config


def _batches(config, count):
    it = pipeline.make_train_iterator(pipeline.DataConfig.from_config(config.data), 0)
    return [next(it) for _ in range(count)]


def _loss_and_grads(trainer: Trainer, batch):
    state = trainer.init_state()

    def fn(params, b):
        with axis_rules(trainer.mesh, trainer.rules):
            (_, (ce, _)), grads = jax.value_and_grad(
                lambda p: loss_sums(trainer.graphdef, p, b, 0.0), has_aux=True)(params)
        return ce, grads
    jitted = jax.jit(fn, in_shardings=(trainer.shardings.params, trainer.batch_sharding))
    return jax.device_get(jitted(state.params, to_global(batch, trainer.batch_sharding)))


def _train(trainer: Trainer, batches):
    state, losses = trainer.init_state(), []
    for batch in batches:
        state, metrics = trainer.train_step(state, to_global(batch, trainer.batch_sharding))
        losses.append(float(metrics["train/loss"]))
    return losses, jax.device_get(state.params)


@functools.lru_cache(maxsize=None)
def _reference(num_layers: int):
    """The plain model with ``num_layers`` layers on one device: the first step's loss and
    gradients, then the losses and parameters of training."""
    config = _config()
    config.model.num_layers = num_layers
    batches = _batches(config, TRAIN_STEPS)
    trainer = Trainer(config, "", jax.devices()[:1])
    return _loss_and_grads(trainer, batches[0]), _train(trainer, batches)


def _max_relative_error(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    worst = 0.0
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        scale = max(np.abs(np.asarray(y)).max(), 1e-12)
        worst = max(worst, np.abs(np.asarray(x) - np.asarray(y)).max() / scale)
    return worst


# The circular schedule is also compared sharded in test_pipeline.py.
SLOW_LAYOUTS = ("pipeline=4,data=2 circular",)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_LAYOUTS else n
                                  for n in LAYOUTS])
def test_layout_matches_one_device(name):
    config = _config(name)
    (ref_loss, ref_grads), (ref_losses, ref_params) = _reference(config.model.num_layers)
    config.mesh.update(LAYOUTS[name])
    model_options, train_options = RUN_OPTIONS.get(name, ({}, {}))
    config.model.update(model_options)
    config.train.update(train_options)
    trainer = Trainer(config, "", jax.devices())
    assert trainer.mesh.devices.size == 8
    batches = _batches(config, TRAIN_STEPS)

    loss, grads = _loss_and_grads(trainer, batches[0])
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    assert _max_relative_error(as_list_of_layers(grads, trainer.exp.model), ref_grads) <= 1e-5

    losses, params = _train(trainer, batches)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-4)
    assert _max_relative_error(as_list_of_layers(params, trainer.exp.model), ref_params) <= 1e-4


def test_pipeline_parameters_are_split_over_stages():
    config = _config("pipeline=4,data=2 gpipe")
    config.mesh.update(LAYOUTS["pipeline=4,data=2 gpipe"])
    trainer = Trainer(config, "", jax.devices())
    wi = trainer.shardings.params["blocks"]["mlp"]["wi"]["kernel"]  # [stage, layers, embed, mlp]
    assert wi.spec[0] == "pipeline"


def test_parameters_are_actually_sharded():
    config = small_config()
    config.mesh.update(dict(data=2, fsdp=2, tensor=2))
    trainer = Trainer(config, "", jax.devices())
    state = trainer.init_state()
    query = state.params["blocks"][0]["attention"]["query"]["kernel"]  # [embed, heads, kv]
    assert query.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor", None)
    assert query.addressable_shards[0].data.shape == (16, 2, 8)


def test_zero1_replicates_parameters_and_shards_optimizer_state():
    config = small_config()
    config.mesh.update(dict(data=1, fsdp=8, rules="zero1"))
    trainer = Trainer(config, "", jax.devices())
    kernel = ("blocks", 0, "mlp", "wi", "kernel")
    param = trainer.shardings.params
    for key in kernel:
        param = param[key]
    assert param.spec == jax.sharding.PartitionSpec(None, None)
    adam_mu = trainer.shardings.opt_state.inner[1][0].mu  # the guard, clip_by_global_norm, adamw
    for key in kernel:
        adam_mu = adam_mu[key]
    assert adam_mu.spec == jax.sharding.PartitionSpec("fsdp", None)


def test_fsdp_shards_parameters_and_optimizer_state_memory(capsys):
    """Per-device parameter + optimizer-state bytes with fsdp=8 are <= 1/6 of one device's."""
    from lm.train.compile_only import compile_report

    def state_bytes(devices, **mesh):
        config = small_config(d_model=256, num_heads=8, num_kv_heads=0, num_layers=2)
        config.mesh.update(mesh)
        trainer = Trainer(config, "", devices)
        batch_bytes = 5 * 8 * 16 * 4 // trainer.mesh.devices.size
        return compile_report(trainer)["argument_bytes_per_device"] - batch_bytes
    one = state_bytes(jax.devices()[:1])
    sharded = state_bytes(jax.devices(), data=1, fsdp=8)
    print(f"parameters + optimizer state per device: 1 device {one:,} B, fsdp=8 {sharded:,} B "
          f"(ratio {one / sharded:.2f})")
    assert sharded <= one / 6
