"""Train-step pieces: loss values by hand, gradient accumulation, z-loss, bf16, optimizers."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lm.data.loader import to_global
from lm.train.loop import Trainer
from lm.train.optimizer import OptimizerConfig, make_optimizer, make_schedule
from lm.train.step import StepConfig, make_train_step, token_losses
from tests.helpers import small_config


def test_token_losses_by_hand():
    logits = jnp.array([[[0.0, np.log(3.0)], [2.0, 2.0]]])  # softmax rows: [1/4, 3/4], [1/2, 1/2]
    targets = jnp.array([[1, 0]])
    ce, log_z = token_losses(logits, targets)
    np.testing.assert_allclose(ce, [[-np.log(0.75), np.log(2.0)]], rtol=1e-6)
    np.testing.assert_allclose(log_z, [[np.log(4.0), 2.0 + np.log(2.0)]], rtol=1e-6)


def _one_step(config, batch, optimizer=None, **step_kw):
    config.train.spike_skip = False  # the state must be the given optimizer's, unwrapped
    trainer = Trainer(config, "", jax.devices()[:1])
    opt_cfg = OptimizerConfig.from_config(config.optimizer)
    optimizer = optimizer or make_optimizer(opt_cfg, 10)
    step = jax.jit(make_train_step(trainer.graphdef, optimizer, make_schedule(opt_cfg, 10),
                                   StepConfig(**step_kw)))
    state = trainer.init_state()
    start = jax.device_get(state.params)
    new_state, metrics = step(state, to_global(batch, trainer.batch_sharding))
    return start, new_state, metrics


def _batch(config, weights_seed=None):
    from lm.data import pipeline
    batch = next(pipeline.make_train_iterator(pipeline.DataConfig.from_config(config.data), 0))
    if weights_seed is not None:  # uneven loss weights, as with padding
        batch["weights"] = (np.random.default_rng(weights_seed).random(batch["weights"].shape) > 0.3
                            ).astype(np.float32)
    return batch


def test_gradient_accumulation_equals_full_batch():
    config = small_config()
    batch = _batch(config, weights_seed=1)
    # new params = params - lr * gradient; a large lr keeps the recovered gradient exact to f32
    # rounding of the gradient itself rather than of the (much larger) parameters.
    lr = 1e4
    sgd = optax.sgd(lr)
    start, full_state, full = _one_step(config, batch, sgd)
    _, acc_state, acc = _one_step(config, batch, sgd, grad_accum_steps=4)
    np.testing.assert_allclose(acc["train/loss"], full["train/loss"], rtol=1e-6)
    np.testing.assert_allclose(acc["train/grad_norm"], full["train/grad_norm"], rtol=1e-5)
    for p0, a, b in zip(jax.tree.leaves(start), jax.tree.leaves(acc_state.params),
                        jax.tree.leaves(full_state.params)):
        grad_acc, grad_full = (p0 - np.asarray(a)) / lr, (p0 - np.asarray(b)) / lr
        scale = np.abs(grad_full).max()
        assert np.abs(grad_acc - grad_full).max() <= 1e-5 * scale


def test_z_loss_metric_is_mean_squared_log_partition():
    config = small_config()
    batch = _batch(config)
    trainer = Trainer(config, "", jax.devices()[:1])
    state = trainer.init_state()
    from lm.train.step import logits_fn
    logits = logits_fn(trainer.graphdef, state.params, batch)
    expected = float(jnp.mean(jnp.square(jax.nn.logsumexp(logits.astype(jnp.float32), -1))))
    _, _, metrics = _one_step(config, batch, z_loss=1e-4)
    np.testing.assert_allclose(metrics["train/z_loss"], expected, rtol=1e-5)


@pytest.mark.parametrize("optimizer", ["adamw", "adafactor"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_training_reduces_loss(optimizer, dtype):
    config = small_config(steps=30, dtype=dtype)
    config.optimizer.name = optimizer
    config.optimizer.lr = 3e-3 if optimizer == "adamw" else 1e-2
    config.data.backend = "array"        # real text, so the loss can fall
    config.model.vocab_size = 0
    trainer = Trainer(config, "", jax.devices()[:1])
    from lm.data import pipeline
    it = pipeline.make_train_iterator(trainer.exp.data, 0)
    state = trainer.init_state()
    losses = []
    for _ in range(30):
        state, metrics = trainer.train_step(state, to_global(next(it), trainer.batch_sharding))
        losses.append(float(metrics["train/loss"]))
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.5, losses
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))  # f32 master copy


def test_weight_decay_mask_spares_norms():
    from lm.train.optimizer import decay_mask
    params = {"kernel": jnp.ones((2, 3)), "scale": jnp.ones(3), "bias": jnp.ones(3)}
    assert decay_mask(params) == {"kernel": True, "scale": False, "bias": False}
