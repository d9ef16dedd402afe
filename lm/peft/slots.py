"""A decoder whose key/value cache starts with P learned slots that every query sees: how prefix
tuning and prompt tuning attach to the base ``Decoder`` from outside it.

The base model's cached path (``Decoder.decode``) already attends over whatever a cache holds, as
a ``CacheStep``'s mask and key positions say. So a model with leading slots

  * decodes with an ordinary cache of P + S slots whose first P hold the learned keys and values
    of every layer (``init_cache``); prompts and new tokens go to slots P.., each step's mask is
    widened to let the row see the P slots (``_decode_slots``), and nothing in lm/infer changes;
  * trains through the same path: a cache of P + T slots pre-filled with the learned ones, the
    T tokens written at index P, and a mask that lets every token see the P slots and, within
    the packed segments and the prefix-LM prefix of the row, what the base model's mask allows.

The learned slots carry positions (``_leading_positions``) for ALiBi; RoPE never rotates them
(the cache holds keys after rotation). A subclass gives ``_leading_kv`` (keys and values
[L, P, G, K]) and may move the tokens' positions (``_token_positions``: a soft prompt takes
positions 0..P-1).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from lm.models.attention import CacheStep, KV_CACHE_AXES
from lm.models.masks import attention_mask
from lm.models.transformer import Decoder
from lm.parallel.axes import constrain


class LeadingSlotsDecoder(Decoder):
    """A ``Decoder`` whose cache starts with learned key/value slots (see the module docstring)."""

    def _leading_kv(self) -> dict:
        """``{"key", "value"}`` [L, P, G, K] in the compute dtype."""
        raise NotImplementedError

    def _leading_count(self) -> int:
        """P (static: read from the parameters' shapes)."""
        raise NotImplementedError

    def _leading_positions(self, size: int) -> jax.Array:
        """Positions [P] of the leading slots (ALiBi measures distances to them)."""
        return jnp.zeros((size,), jnp.int32)

    def _token_positions(self, positions, reach: int):
        """The input's positions (``reach``: the input's length or the cache's slots)."""
        return positions

    # ------------------------------------------------------------------------- training forward

    def __call__(self, tokens_bt, positions_bt=None, segment_ids_bt=None, dropout_rng=None,
                 bidirectional_bt=None):
        """Logits [B, T, V], as ``Decoder.__call__``, with every token seeing the leading slots."""
        batch, length = tokens_bt.shape
        if self.cfg.arch == "encoder":
            bidirectional_bt = jnp.ones_like(tokens_bt)
        if positions_bt is None:
            positions_bt = jnp.broadcast_to(jnp.arange(length), tokens_bt.shape)
        size = self._leading_count()
        cache = self._cache_with(self._leading_kv(), batch, size + length)
        mask_b1tt = attention_mask(segment_ids_bt, length, bidirectional_bt)
        if mask_b1tt is None:
            mask_b1tt = jnp.tril(jnp.ones((length, length), bool))[None, None]
        mask_b1tt = jnp.broadcast_to(mask_b1tt, (batch, 1, length, length))
        positions_bt = self._token_positions(positions_bt, length)
        step = self._see_leading(CacheStep(jnp.int32(0), mask_b1tt, positions_bt), size)
        logits_btv, _ = self.decode(tokens_bt, positions_bt, cache, step, dropout_rng)
        return logits_btv

    # ------------------------------------------------------------------------- decoding protocol

    def init_cache(self, batch: int, length: int) -> dict:
        """A cache of P + ``length`` slots whose first P hold the learned keys and values."""
        cache = super().init_cache(batch, length)
        return {**cache, "self": self._cache_with(self._leading_kv(), batch, self._leading_count() + length)}

    def grow_cache(self, cache: dict, length: int) -> dict:
        return super().grow_cache(cache, self._leading_count() + length)

    def _decode_slots(self, tokens_bt, positions_bt, cache: dict, step: CacheStep):
        """The base protocol's call, built over the row's own slots, moved past the leading ones."""
        size = self._leading_count()
        own = step.mask_b1ts.shape[-1] - size
        step = CacheStep(step.index, step.mask_b1ts[..., :own], step.key_positions_bs[:, :own])
        step = step._replace(key_positions_bs=self._token_positions(step.key_positions_bs, own))
        positions_bt = self._token_positions(positions_bt, own)
        return self.decode(tokens_bt, positions_bt, cache["self"], self._see_leading(step, size))

    # ------------------------------------------------------------------------- helpers

    def _see_leading(self, step: CacheStep, size: int) -> CacheStep:
        """``step`` (over the row's own slots) over a cache whose first ``size`` slots are the
        leading ones: its writes move past them, and every query sees them."""
        mask_b1ts = step.mask_b1ts
        lead_mask = jnp.ones((*mask_b1ts.shape[:-1], size), bool)
        batch = step.key_positions_bs.shape[0]
        lead_positions = jnp.broadcast_to(self._leading_positions(size), (batch, size))
        return CacheStep(step.index + size, jnp.concatenate([lead_mask, mask_b1ts], axis=-1),
                         jnp.concatenate([lead_positions.astype(step.key_positions_bs.dtype),
                                          step.key_positions_bs], axis=1))

    def _cache_with(self, leading: dict, batch: int, slots: int) -> dict:
        """Keys and values [L, B, G, slots, K]: the leading [L, P, G, K] first, zeros after."""
        def fill(slots_lpgk):
            slots_lgpk = jnp.swapaxes(slots_lpgk, 1, 2).astype(jnp.dtype(self.cfg.dtype))
            layers, heads, size, features = slots_lgpk.shape
            lead_lbgpk = jnp.broadcast_to(slots_lgpk[:, None], (layers, batch, heads, size, features))
            widths = [(0, 0), (0, 0), (0, 0), (0, slots - size), (0, 0)]
            return constrain(jnp.pad(lead_lbgpk, widths), ("layers", *KV_CACHE_AXES))
        return {name: fill(leading[name]) for name in ("key", "value")}
