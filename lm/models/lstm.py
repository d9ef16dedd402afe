"""LSTM language model: the recurrent baseline, trained and sampled like the Transformer.

  tokens [B, T] -> embed -> N LSTM layers -> logits [B, T, V] (tied embedding or a head)

Each layer projects all timesteps at once (one 2-D matmul through ``Dense``), then runs the
recurrence with ``lax.scan`` over time: one [B, H] x [H, 4H] matmul per step. The 4H gate axis is
unit-major, [H, 4] with gates (input, forget, cell, output) innermost, so a shard of the 'mlp'
axis holds whole units and the cell update needs no communication. The state (h, c) is zero at
every position 0, so documents packed into one row never see each other.

Decoding (lm/infer/decode.py, through the protocol of lm/models/decoding.py) carries each layer's
final (h, c) as its cache, stacked [L, B, D]: ``decode`` continues the recurrence from it over a
prompt or one new token.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lm.models.config import ModelConfig
from lm.models.decoding import RecurrentDecoding
from lm.models.layers import Dense, Embed, dropout, param
from lm.parallel.axes import constrain

NUM_GATES = 4  # input, forget, cell candidate, output; in this order inside each unit
FORGET_GATE = 1
# Timesteps per iteration of the scan's loop. On CPU unrolling did not help: 2 was within noise
# of 1, 8 was ~20% slower and 16 ~2x slower (d_model 256, batch 12, length 64), and compiles grow.
SCAN_UNROLL = 1

# The length axis stays whole: the scan runs along it. The layer outputs are left unconstrained:
# constraining them to (batch, None, embed) made XLA's partitioner return wrong gradients on a
# data=2, fsdp=2, tensor=2 mesh (the forward pass stayed right; tests/test_lstm.py covers it).
_GATE_AXES = ("activation_batch", None, "activation_mlp")
_LOGIT_AXES = ("activation_batch", "activation_length", "activation_vocab")
_STATE_AXES = ("layers", "activation_batch", None)  # decoding cache: (h, c) of every layer


def _fold(rng: Optional[jax.Array], i: int) -> Optional[jax.Array]:
    return None if rng is None else jax.random.fold_in(rng, i)


def gate_bias_init(key, shape, dtype):
    """Zeros, except 1 for the forget gates (Gers et al. 2000; Jozefowicz et al. 2015)."""
    del key
    units = shape[0] // NUM_GATES
    bias = jnp.zeros((units, NUM_GATES), dtype).at[:, FORGET_GATE].set(1.0)
    return bias.reshape(shape)


# Gate activations: sigmoid for input, forget and output, tanh for the cell candidate.
_IS_CELL_GATE = np.array([False, False, True, False])


def activate_gates(pre_bh4: jax.Array) -> jax.Array:
    return jnp.where(_IS_CELL_GATE, jnp.tanh(pre_bh4), jax.nn.sigmoid(pre_bh4))


def gate_activation_grad(act_bh4: jax.Array) -> jax.Array:
    """d act / d pre-activation, from the activations themselves."""
    return jnp.where(_IS_CELL_GATE, 1.0 - jnp.square(act_bh4), act_bh4 * (1.0 - act_bh4))


def _shift_in_zero(x_tbh: jax.Array) -> jax.Array:
    """x[t - 1] at t, zero at t = 0."""
    return jnp.concatenate([jnp.zeros_like(x_tbh[:1]), x_tbh[:-1]], axis=0)


def _recurrence_forward(gates_tbg, keep_tb, recurrent_hg):
    """Every h [T, B, H], with the cells [T, B, H] and gate activations [T, B, H, 4] (float32)."""
    _, batch, width = gates_tbg.shape
    units = width // NUM_GATES
    init = (jnp.zeros((batch, units), gates_tbg.dtype), jnp.zeros((batch, units), jnp.float32))
    return _recurrence_scan(gates_tbg, keep_tb, recurrent_hg, init)[1]


def _recurrence_scan(gates_tbg, keep_tb, recurrent_hg, init):
    """The recurrence from the state ``init`` = (h, c): ((h, c) after the last step, (every h,
    every c, every gate activation))."""
    _, batch, width = gates_tbg.shape
    units = width // NUM_GATES

    def step(carry, inputs):
        h_bh, c_bh = carry
        gates_bg, keep_b = inputs
        h_bh, c_bh = h_bh * keep_b[:, None], c_bh * keep_b[:, None]
        pre_bg = (gates_bg + h_bh @ recurrent_hg).astype(jnp.float32)
        act_bh4 = activate_gates(pre_bg.reshape(batch, units, NUM_GATES))
        c_bh = act_bh4[..., 1] * c_bh + act_bh4[..., 0] * act_bh4[..., 2]
        h_bh = (act_bh4[..., 3] * jnp.tanh(c_bh)).astype(gates_tbg.dtype)
        return (h_bh, c_bh), (h_bh, c_bh, act_bh4)

    return jax.lax.scan(step, init, (gates_tbg, keep_tb), unroll=SCAN_UNROLL)


@jax.custom_vjp
def lstm_recurrence(gates_tbg: jax.Array, keep_tb: jax.Array, recurrent_hg: jax.Array) -> jax.Array:
    """h_t = o * tanh(c_t), c_t = f * c_{t-1} + i * g with [i f g o] = act(gates_t + h_{t-1} W),
    for time-major gate inputs [T, B, 4H]; the state is multiplied by ``keep_tb`` (0: a new
    segment starts) before step t. Returns every h [T, B, H]."""
    return _recurrence_forward(gates_tbg, keep_tb, recurrent_hg)[0]


def _recurrence_fwd(gates_tbg, keep_tb, recurrent_hg):
    h_tbh, c_tbh, act_tbh4 = _recurrence_forward(gates_tbg, keep_tb, recurrent_hg)
    return h_tbh, (h_tbh, c_tbh, act_tbh4, keep_tb, recurrent_hg)


def _recurrence_bwd(residuals, dh_tbh):
    """Backward through time carrying (dh, dc); the recurrent weight's gradient is one matmul over
    all timesteps afterwards, not a [H, 4H] accumulation per step (several times faster on CPU)."""
    h_tbh, c_tbh, act_tbh4, keep_tb, recurrent_hg = residuals
    keep_tb1 = keep_tb[..., None]
    c_prev_tbh = _shift_in_zero(c_tbh) * keep_tb1
    recurrent_gh = recurrent_hg.T

    def step(carry, inputs):
        dh_next_bh, dc_next_bh = carry
        dh_out_bh, c_bh, c_prev_bh, act_bh4, keep_b1 = inputs
        i_bh, f_bh, g_bh, o_bh = (act_bh4[..., k] for k in range(NUM_GATES))
        dh_bh = dh_out_bh.astype(jnp.float32) + dh_next_bh
        tanh_c_bh = jnp.tanh(c_bh)
        dc_bh = dc_next_bh + dh_bh * o_bh * (1.0 - jnp.square(tanh_c_bh))
        dact_bh4 = jnp.stack([dc_bh * g_bh, dc_bh * c_prev_bh, dc_bh * i_bh, dh_bh * tanh_c_bh], axis=-1)
        dpre_bg = (dact_bh4 * gate_activation_grad(act_bh4)).reshape(dh_bh.shape[0], -1)
        dh_prev_bh = (dpre_bg.astype(recurrent_gh.dtype) @ recurrent_gh).astype(jnp.float32)
        return (dh_prev_bh * keep_b1, dc_bh * f_bh * keep_b1), dpre_bg

    zeros = jnp.zeros(c_tbh.shape[1:], jnp.float32)
    inputs = (dh_tbh, c_tbh, c_prev_tbh, act_tbh4, keep_tb1)
    dpre_tbg = jax.lax.scan(step, (zeros, zeros), inputs, reverse=True, unroll=SCAN_UNROLL)[1]
    h_prev_nh = (_shift_in_zero(h_tbh) * keep_tb1.astype(h_tbh.dtype)).reshape(-1, h_tbh.shape[-1])
    dpre_ng = dpre_tbg.reshape(-1, dpre_tbg.shape[-1]).astype(h_prev_nh.dtype)
    d_recurrent_hg = (h_prev_nh.T @ dpre_ng).astype(recurrent_hg.dtype)
    return dpre_tbg.astype(h_tbh.dtype), jnp.zeros_like(keep_tb), d_recurrent_hg


lstm_recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)


class LSTMLayer(nnx.Module):
    """One recurrent layer: x [B, T, D] -> h [B, T, H] with H = D."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        d = cfg.d_model
        self.dtype = jnp.dtype(cfg.dtype)
        no_bias = dataclasses.replace(cfg, use_bias=False)  # the gate bias below always exists
        self.input = Dense((d,), (NUM_GATES * d,), ("embed",), ("mlp",), cfg=no_bias, rngs=rngs)
        self.recurrent = param(rngs, jax.nn.initializers.normal(cfg.init_std), (d, NUM_GATES * d),
                               ("embed", "mlp"), cfg.param_dtype)
        self.bias = param(rngs, gate_bias_init, (NUM_GATES * d,), ("mlp",), cfg.param_dtype)

    def __call__(self, x_btd: jax.Array, reset_bt: jax.Array) -> jax.Array:
        gates_tbg, keep_tb = self._gate_inputs(x_btd, reset_bt)
        h_tbh = lstm_recurrence(gates_tbg, keep_tb, self.recurrent[...].astype(self.dtype))
        return jnp.swapaxes(h_tbh, 0, 1)

    def decode(self, x_btd: jax.Array, reset_bt: jax.Array, h_bh: jax.Array,
               c_bh: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """The layer continued from the state (h, c): (every h [B, T, H], final h, final c)."""
        gates_tbg, keep_tb = self._gate_inputs(x_btd, reset_bt)
        (h_bh, c_bh), (h_tbh, _, _) = _recurrence_scan(
            gates_tbg, keep_tb, self.recurrent[...].astype(self.dtype), (h_bh, c_bh))
        return jnp.swapaxes(h_tbh, 0, 1), h_bh, c_bh

    def _gate_inputs(self, x_btd, reset_bt):
        """Time-major gate inputs [T, B, 4H] and the state-keeping factors [T, B]."""
        gates_btg = self.input(x_btd) + self.bias[...].astype(self.dtype)
        gates_btg = constrain(gates_btg, _GATE_AXES)
        keep_tb = jnp.swapaxes(~reset_bt, 0, 1).astype(self.dtype)
        return jnp.swapaxes(gates_btg, 0, 1), keep_tb


class LSTMLM(nnx.Module):
    """Stacked LSTM language model with the Decoder's call signature (causal only)."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = Embed(cfg.vocab_size, cfg, rngs)
        self.layers = nnx.List([LSTMLayer(cfg, rngs) for _ in range(cfg.num_layers)])
        self.head = (None if cfg.tie_embeddings else
                     Dense((cfg.d_model,), (cfg.vocab_size,), ("embed",), ("vocab",), cfg=cfg, rngs=rngs))

    def __call__(self, tokens_bt: jax.Array, positions_bt: Optional[jax.Array] = None,
                 segment_ids_bt: Optional[jax.Array] = None,
                 dropout_rng: Optional[jax.Array] = None,
                 bidirectional_bt: Optional[jax.Array] = None) -> jax.Array:
        """Logits [B, T, V]. The state resets where ``positions_bt`` is 0 (default: one segment
        per row); ``segment_ids_bt`` is not needed for that and is ignored."""
        del segment_ids_bt
        if bidirectional_bt is not None:
            raise ValueError("the LSTM language model is causal only: a batch with 'bidirectional' "
                             "(prefix LM) needs arch='decoder'")
        if positions_bt is None:
            positions_bt = jnp.broadcast_to(jnp.arange(tokens_bt.shape[1]), tokens_bt.shape)
        reset_bt = positions_bt == 0
        x_btd = self.embed(tokens_bt)
        for index, layer in enumerate(self.layers):
            x_btd = dropout(x_btd, self.cfg.dropout, _fold(dropout_rng, index))
            x_btd = layer(x_btd, reset_bt)
        x_btd = dropout(x_btd, self.cfg.dropout, _fold(dropout_rng, len(self.layers)))
        return self._logits(x_btd)

    def forward(self, batch: dict, packed: bool = False,
                dropout_rng: Optional[jax.Array] = None) -> jax.Array:
        """Logits [B, T, V] of a batch; positions reset the state, so packing needs no more."""
        del packed
        return self(batch["inputs"], batch["positions"], None, dropout_rng)

    # The decoding protocol (lm/models/decoding.py): the cache is the state after the last token.
    @property
    def decoding(self) -> RecurrentDecoding:
        return RecurrentDecoding(self.cfg)

    can_generate = True

    def init_cache(self, batch: int, length: int = 0) -> dict:
        """Zero states: h [L, B, D] in the compute dtype, c [L, B, D] in float32 (``length`` is
        the protocol's; a state has no slots)."""
        del length
        shape = (self.cfg.num_layers, batch, self.cfg.d_model)
        return {"h": constrain(jnp.zeros(shape, jnp.dtype(self.cfg.dtype)), _STATE_AXES),
                "c": constrain(jnp.zeros(shape, jnp.float32), _STATE_AXES)}

    def prefill(self, inputs: dict, cache: dict):
        """Logits [B, V] after each left-padded prompt: the state resets at each row's first
        token (position 0, as on every padding slot before it)."""
        tokens_bp, pad_b = inputs["tokens"], inputs["pad"]
        positions_bp = jnp.maximum(jnp.arange(tokens_bp.shape[1])[None, :] - pad_b[:, None], 0)
        logits_bpv, cache = self.decode(tokens_bp, positions_bp, cache)
        return logits_bpv[:, -1].astype(jnp.float32), cache

    def decode_step(self, tokens_b, cache: dict, slot):
        """Logits [B, V] after one more token per row (never a reset: positions are past 0)."""
        del slot
        logits_b1v, cache = self.decode(tokens_b[:, None], jnp.ones_like(tokens_b)[:, None], cache)
        return logits_b1v[:, 0].astype(jnp.float32), cache

    def grow_cache(self, cache: dict, length: int) -> dict:
        return cache

    def select_rows(self, cache: dict, rows_n) -> dict:
        return jax.tree.map(lambda x: jnp.take(x, rows_n, axis=1), cache)

    def decode(self, tokens_bt: jax.Array, positions_bt: jax.Array,
               cache: dict) -> tuple[jax.Array, dict]:
        """Logits [B, T, V] of T new tokens continuing the cached states; the state resets
        where ``positions_bt`` is 0. Returns them with the states after the last token."""
        reset_bt = positions_bt == 0
        x_btd = self.embed(tokens_bt)
        hs, cs = [], []
        for index, layer in enumerate(self.layers):
            x_btd, h_bh, c_bh = layer.decode(x_btd, reset_bt, cache["h"][index], cache["c"][index])
            hs.append(h_bh)
            cs.append(c_bh)
        cache = {"h": constrain(jnp.stack(hs), _STATE_AXES), "c": constrain(jnp.stack(cs), _STATE_AXES)}
        return self._logits(x_btd), cache

    def _logits(self, x_btd):
        logits_btv = self.embed.attend(x_btd) if self.head is None else self.head(x_btd)
        return constrain(logits_btv, _LOGIT_AXES)
