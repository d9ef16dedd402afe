"""The LSTM language model: a float64 NumPy reference, state resets between packed documents,
sharded == one device, and training + checkpointing + sampling through the unchanged Trainer."""
from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments import shakespeare_char
from lm.data import pipeline
from lm.data.loader import to_global
from lm.infer.sample import generate
from lm.models import ModelConfig, build
from lm.parallel.axes import STANDARD_RULES, axis_rules
from lm.train.checkpoint import Checkpointer
from lm.train.loop import Trainer, evaluate_checkpoint, pretrain
from lm.train.step import loss_sums
from tests.helpers import small_config

# init_std 0.3 (not 0.02) so that the gates saturate differently and every weight matters.
BASE = dict(arch="lstm", vocab_size=37, num_layers=2, d_model=16, init_std=0.3)
B, T = 2, 12
TOL = dict(rtol=1e-5, atol=1e-5)


def config(**overrides) -> ModelConfig:
    return ModelConfig(**{**BASE, **overrides})


def tokens(seed: int = 0, batch: int = B, length: int = T) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, BASE["vocab_size"], (batch, length)).astype(np.int32)


def model_with_random_biases(cfg: ModelConfig, seed: int = 1):
    """The model with its gate biases replaced by random values, so that their order matters."""
    graphdef, state = nnx.split(build(cfg))
    rng = np.random.RandomState(seed)
    pure = jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.asarray(rng.standard_normal(x.shape), x.dtype) if path[-1].key == "bias" else x,
        state.to_pure_dict())
    state.replace_by_pure_dict(pure)
    return nnx.merge(graphdef, state)


def params_of(model) -> dict:
    return jax.tree.map(lambda x: np.asarray(x, np.float64), nnx.split(model)[1].to_pure_dict())


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, params, toks, positions, segment_ids, dropout_rng):
    return nnx.merge(graphdef, params)(toks, positions, segment_ids, dropout_rng)


def run(model, toks, positions=None, segment_ids=None, dropout_rng=None) -> np.ndarray:
    graphdef, params = nnx.split(model)
    return np.asarray(_forward(graphdef, params, toks, positions, segment_ids, dropout_rng))


# ----------------------------------------------------------------------------- NumPy reference


def reference_lstm_layer(x_btd, kernel_dg, recurrent_hg, bias_g, positions_bt, xp=np):
    """h_t from (x_t, h_{t-1}, c_{t-1}); the 4H axis is [unit, gate], gates (i, f, g, o)."""
    batch, length, _ = x_btd.shape
    units = recurrent_hg.shape[0]
    h, c = xp.zeros((batch, units)), xp.zeros((batch, units))
    outputs = []
    for t in range(length):
        continuing = (positions_bt[:, t] != 0)[:, None]
        h, c = h * continuing, c * continuing
        gates = (x_btd[:, t] @ kernel_dg + h @ recurrent_hg + bias_g).reshape(batch, units, 4)
        sigmoid = 1.0 / (1.0 + xp.exp(-gates))
        i, f, g, o = sigmoid[..., 0], sigmoid[..., 1], xp.tanh(gates[..., 2]), sigmoid[..., 3]
        c = f * c + i * g
        h = o * xp.tanh(c)
        outputs.append(h)
    return xp.stack(outputs, axis=1)


def reference_logits(params, cfg: ModelConfig, toks, positions=None, xp=np):
    """Float64 logits with xp=np; with xp=jax.numpy a plainly differentiated float32 version."""
    if positions is None:
        positions = np.tile(np.arange(toks.shape[1]), (toks.shape[0], 1))
    table = params["embed"]["embedding"]
    x = table[toks]
    for index in range(cfg.num_layers):
        layer = params["layers"][index]
        x = reference_lstm_layer(x, layer["input"]["kernel"], layer["recurrent"], layer["bias"],
                                 positions, xp)
    if cfg.tie_embeddings:
        return x @ table.T
    return x @ params["head"]["kernel"] + params["head"].get("bias", 0.0)


@pytest.mark.parametrize("overrides", [{}, dict(tie_embeddings=False, num_layers=3, use_bias=True)],
                         ids=["tied", "head, 3 layers"])
def test_logits_match_numpy_reference(overrides):
    cfg = config(**overrides)
    model = model_with_random_biases(cfg)
    toks = tokens()
    got = run(model, toks)
    assert got.shape == (B, T, cfg.vocab_size) and got.dtype == np.float32
    np.testing.assert_allclose(got, reference_logits(params_of(model), cfg, toks), **TOL)


def test_resets_match_numpy_reference_with_arbitrary_positions():
    cfg = config()
    model = model_with_random_biases(cfg)
    toks = tokens(seed=3)
    positions = np.array([[0, 1, 2, 0, 1, 2, 3, 4, 0, 1, 0, 1],
                          [5, 6, 7, 8, 9, 0, 1, 2, 3, 4, 5, 6]], np.int32)
    np.testing.assert_allclose(run(model, toks, positions),
                               reference_logits(params_of(model), cfg, toks, positions), **TOL)


def test_gradients_match_plain_autodiff_of_the_reference():
    """The recurrence's hand-written backward pass equals jax.grad of the plain loop."""
    cfg = config(tie_embeddings=False)
    model = model_with_random_biases(cfg)
    graphdef, state = nnx.split(model)
    params = state.to_pure_dict()
    toks = tokens(seed=6)
    positions = np.array([[0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6, 0], list(range(T))], np.int32)
    cotangent = jnp.asarray(np.random.RandomState(7).standard_normal((B, T, cfg.vocab_size)), jnp.float32)

    def model_loss(p):
        return jnp.sum(nnx.merge(graphdef, p)(jnp.asarray(toks), jnp.asarray(positions)) * cotangent)

    def reference_loss(p):
        return jnp.sum(reference_logits(p, cfg, toks, positions, xp=jnp) * cotangent)
    got, want = jax.jit(jax.grad(model_loss))(params), jax.grad(reference_loss)(params)
    for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * np.abs(w).max(), err_msg=str(path))


def test_forget_gate_bias_starts_at_one_and_every_parameter_names_its_axes():
    cfg = config()
    state = nnx.split(build(cfg))[1]
    bias = np.asarray(state.to_pure_dict()["layers"][0]["bias"]).reshape(cfg.d_model, 4)
    np.testing.assert_array_equal(bias, np.tile([0.0, 1.0, 0.0, 0.0], (cfg.d_model, 1)))
    known = {name for name, _ in STANDARD_RULES}
    for path, variable in nnx.to_flat_state(state):
        names = variable.get_metadata().get("out_sharding")
        assert isinstance(names, tuple) and len(names) == variable.get_value().ndim, (path, names)
        assert set(names) <= known, (path, names)


# ----------------------------------------------------------------------------- causality and packing


def test_logits_depend_only_on_earlier_tokens():
    model = model_with_random_biases(config())
    toks = tokens()
    changed = toks.copy()
    changed[:, 7] = (changed[:, 7] + 1) % BASE["vocab_size"]
    before, after = run(model, toks), run(model, changed)
    np.testing.assert_array_equal(before[:, :7], after[:, :7])
    assert np.abs(before[:, 7:] - after[:, 7:]).max() > 1e-3


def test_packed_documents_equal_documents_run_alone():
    model = model_with_random_biases(config())
    first, second = tokens(seed=4, batch=1, length=5), tokens(seed=5, batch=1, length=7)
    packed = np.concatenate([first, second], axis=1)
    positions = np.concatenate([np.arange(5), np.arange(7)])[None].astype(np.int32)
    segment_ids = np.array([[1] * 5 + [2] * 7], np.int32)
    got = run(model, packed, positions, segment_ids)
    alone = np.concatenate([run(model, first), run(model, second)], axis=1)
    np.testing.assert_allclose(got, alone, **TOL)
    # Without the reset the second document would see the first.
    assert np.abs(run(model, packed)[:, 5:] - alone[:, 5:]).max() > 1e-3


def test_dropout_is_functional():
    model = model_with_random_biases(config(dropout=0.5))
    toks = tokens()
    plain = run(model, toks)
    np.testing.assert_array_equal(plain, run(model, toks))
    key = jax.random.key(0)
    dropped = run(model, toks, dropout_rng=key)
    np.testing.assert_array_equal(dropped, run(model, toks, dropout_rng=key))
    assert np.abs(run(model, toks, dropout_rng=jax.random.key(1)) - dropped).max() > 1e-3
    assert np.abs(dropped - plain).max() > 1e-3


def test_bidirectional_input_is_refused():
    model = build(config())
    toks = jnp.asarray(tokens())
    with pytest.raises(ValueError, match="causal only"):
        model(toks, None, None, None, jnp.ones(toks.shape, bool))


# ----------------------------------------------------------------------------- sharding


def _sharded_config(**mesh):
    config_ = small_config(arch="lstm", num_heads=8, num_kv_heads=0, init_std=0.2)
    config_.mesh.update(mesh)
    return config_


def _loss_and_grads(trainer: Trainer, batch):
    def fn(params, b):
        with axis_rules(trainer.mesh, trainer.rules):
            (_, (ce, _)), grads = jax.value_and_grad(
                lambda p: loss_sums(trainer.graphdef, p, b, 0.0), has_aux=True)(params)
        return ce, grads
    jitted = jax.jit(fn, in_shardings=(trainer.shardings.params, trainer.batch_sharding))
    params = trainer.init_state().params
    return jax.device_get(jitted(params, to_global(batch, trainer.batch_sharding)))


def _max_relative_error(a, b) -> float:
    worst = 0.0
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        scale = max(np.abs(np.asarray(y)).max(), 1e-12)
        worst = max(worst, float(np.abs(np.asarray(x) - np.asarray(y)).max() / scale))
    return worst


def _first_batch(config_):
    return next(pipeline.make_train_iterator(pipeline.DataConfig.from_config(config_.data), 0))


@pytest.fixture(scope="module")
def one_device_loss_and_grads():
    config_ = _sharded_config()
    return _loss_and_grads(Trainer(config_, "", jax.devices()[:1]), _first_batch(config_))


@pytest.mark.parametrize("mesh", [dict(data=2, fsdp=2, tensor=2), dict(data=8),
                                  dict(data=1, tensor=8), dict(data=2, sequence=2, tensor=2)],
                         ids=["data=2,fsdp=2,tensor=2", "data=8", "tensor=8", "data=2,sequence=2,tensor=2"])
def test_sharded_forward_and_grad_match_one_device(mesh, one_device_loss_and_grads):
    ref_loss, ref_grads = one_device_loss_and_grads
    config_ = _sharded_config(**mesh)
    trainer = Trainer(config_, "", jax.devices())
    assert trainer.mesh.devices.size == 8
    loss, grads = _loss_and_grads(trainer, _first_batch(config_))
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    assert _max_relative_error(grads, ref_grads) <= 1e-5
    assert min(np.abs(g).max() for g in jax.tree.leaves(grads)) > 0


def test_gate_weights_are_sharded_by_unit_over_tensor():
    trainer = Trainer(_sharded_config(data=2, fsdp=2, tensor=2), "", jax.devices())
    layer = trainer.shardings.params["layers"][0]
    assert layer["input"]["kernel"].spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    assert layer["recurrent"].spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    assert layer["bias"].spec == jax.sharding.PartitionSpec("tensor")


# ----------------------------------------------------------------------------- end to end


def _losses(workdir: str, key: str) -> list[float]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [row[key] for row in rows if key in row]


def vocab_size_of(config_) -> int:
    return pipeline.vocab_size(pipeline.DataConfig.from_config(config_.data))


def test_pretrain_checkpoint_and_sample_on_shakespeare(tmp_path):
    config_ = shakespeare_char.get_config("smoke")
    config_.model.update(arch="lstm", d_model=64, num_layers=2, init_std=0.05)
    config_.optimizer.update(lr=1e-2, min_lr=1e-3, warmup_steps=2)
    config_.train.update(async_checkpoint=False, progress=False)
    workdir = str(tmp_path / "run")
    final = pretrain(config_, workdir, jax.devices()[:1])

    assert final["step"] == 20 and os.path.isdir(os.path.join(workdir, "checkpoints", "20"))
    train_losses, eval_losses = _losses(workdir, "train/loss"), _losses(workdir, "eval/loss")
    uniform = np.log(vocab_size_of(config_))
    assert train_losses[-1] < train_losses[0], train_losses
    assert eval_losses[-1] < eval_losses[0] and eval_losses[-1] < uniform - 0.5, (eval_losses, uniform)
    with open(os.path.join(workdir, "samples.txt")) as f:
        assert "=== step 20 ===" in f.read()

    scores = evaluate_checkpoint(config_, workdir, devices=jax.devices()[:1])
    assert scores["step"] == 20
    np.testing.assert_allclose(scores["eval/loss"], final["eval/loss"], rtol=1e-5)

    trainer = Trainer(config_, workdir, jax.devices()[:1])
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    state, _ = checkpointer.restore(20, trainer.abstract_state)
    checkpointer.close()
    sampled = generate(trainer.graphdef, state.params, [1, 2, 3], max_new_tokens=10, window=16, seed=0,
                       num_samples=2)
    assert [len(row) for row in sampled] == [10, 10]
    assert all(0 <= t < trainer.exp.model.vocab_size for row in sampled for t in row)
