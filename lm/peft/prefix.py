"""Prefix tuning (Li & Liang 2021): every layer gets P learned key/value slots that every query
attends to, in front of the sequence's own keys: ``PrefixTunedDecoder`` is a decoder whose cache
starts with them (lm.peft.slots), in training as in decoding. RoPE does not rotate them; for
ALiBi they sit at position 0, where the text starts.

Direct (``prefix_hidden`` 0): ``prefix_tuning/key`` and ``prefix_tuning/value`` [L, P, G, K].
Reparameterized (``prefix_hidden`` H > 0), as in the paper, for a steadier optimization: the
slots of all layers come from an MLP of a smaller table,

    [key; value] = tanh(E W1 + b1) W2 + b2     E [P, D], W1 [D, H], W2 [H, L, 2, G, K]

with parameters ``prefix_tuning/{embedding, hidden, hidden_bias, out, out_bias}``. After
training only the MLP's output matters, so it can be computed once and kept as direct slots.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lm.models.config import ModelConfig
from lm.models.layers import param
from lm.peft.config import PeftConfig
from lm.peft.slots import LeadingSlotsDecoder

# [L, P, G, K]: the slot axis is unnamed (replicated), heads shard like the keys they join.
SLOT_AXES = ("layers", None, "kv_heads", "kv")


class PrefixTuning(nnx.Module):
    def __init__(self, cfg: ModelConfig, peft: PeftConfig, rngs: nnx.Rngs):
        layers, length, hidden = cfg.num_layers, peft.prefix_length, peft.prefix_hidden
        slots = (layers, length, cfg.kv_heads, cfg.dim_per_head)
        normal, zeros, dtype = jax.nn.initializers.normal(cfg.init_std), jax.nn.initializers.zeros, cfg.param_dtype
        self.dtype = jnp.dtype(cfg.dtype)
        self.length = length
        self.reparameterized = hidden > 0
        if not self.reparameterized:
            self.key = param(rngs, normal, slots, SLOT_AXES, dtype)
            self.value = param(rngs, normal, slots, SLOT_AXES, dtype)
            return
        pair = (layers, 2, cfg.kv_heads, cfg.dim_per_head)
        pair_axes = ("layers", None, "kv_heads", "kv")
        self.embedding = param(rngs, normal, (length, cfg.d_model), (None, "embed"), dtype)
        self.hidden = param(rngs, normal, (cfg.d_model, hidden), ("embed", None), dtype)
        self.hidden_bias = param(rngs, zeros, (hidden,), (None,), dtype)
        self.out = param(rngs, normal, (hidden, *pair), (None, *pair_axes), dtype)
        self.out_bias = param(rngs, zeros, pair, pair_axes, dtype)

    def __call__(self) -> dict:
        """``{"key", "value"}``: every layer's slots [L, P, G, K] in the compute dtype."""
        if not self.reparameterized:
            return {"key": self.key[...].astype(self.dtype), "value": self.value[...].astype(self.dtype)}
        h_ph = jnp.tanh(self.embedding[...] @ self.hidden[...] + self.hidden_bias[...])
        out = self.out[...]
        pairs_plcgk = (h_ph @ out.reshape(out.shape[0], -1)).reshape(h_ph.shape[0], *out.shape[1:])
        pairs_plcgk = (pairs_plcgk + self.out_bias[...]).astype(self.dtype)
        slots_lcpgk = jnp.swapaxes(pairs_plcgk, 0, 1).swapaxes(1, 2)  # [L, 2, P, G, K]
        return {"key": slots_lcpgk[:, 0], "value": slots_lcpgk[:, 1]}


class PrefixTunedDecoder(LeadingSlotsDecoder):
    """A decoder whose cache starts with the ``prefix_tuning`` slots of every layer."""

    def _leading_kv(self) -> dict:
        return self.prefix_tuning()

    def _leading_count(self) -> int:
        return self.prefix_tuning.length


def attach_prefix(model: PrefixTunedDecoder, cfg: ModelConfig, peft: PeftConfig, rngs: nnx.Rngs) -> None:
    model.prefix_tuning = PrefixTuning(cfg, peft, rngs)
