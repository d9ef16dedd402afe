"""Encoder-decoder Transformer (T5 family) as a Flax NNX module.

  encoder tokens [B, S] -> embed -> N_enc bidirectional blocks -> norm -> memory [B, S, D]
  decoder tokens [B, T] -> embed -> N_dec blocks (causal self-attention, cross-attention to the
                           memory, MLP) -> norm -> logits [B, T, V]

The token embedding (and the learned position table, when configured) is shared by both stacks
and, with ``tie_embeddings``, by the output projection, as in T5. Positions follow the config
in both self-attentions; cross-attention has no position term. Packed examples are kept apart by
segment ids: encoder positions see their own segment, decoder positions the encoder positions
of the same segment (lm/models/masks.py).

Decoding (lm/infer/decode.py) goes through the protocol of lm/models/decoding.py: ``prefill``
encodes the prompt once (every decoder layer's cross-attention keys and values of the memory go
into the cache beside the empty self-attention cache), then ``decode_cached`` runs the start
token and each new token.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from lm.models import masks
from lm.models.attention import Attention, CacheStep
from lm.models.config import ModelConfig
from lm.models.decoding import SlotCache
from lm.models.layers import MLP, Dense, Embed, Norm
from lm.models.transformer import (_X_AXES, Block, _fold, embed_tokens, make_stacked_blocks,
                                   position_table, project_logits, remat, run_stack_cached,
                                   scan_blocks)
from lm.parallel.axes import constrain


class DecoderBlock(nnx.Module):
    """Self-attention, cross-attention and MLP; serial (pre-norm, three residual adds) or
    parallel (x + self(n(x)) + cross(n(x)) + mlp(n(x)))."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.parallel = cfg.block == "parallel"
        self.self_norm = Norm(cfg, rngs)
        self.self_attention = Attention(cfg, rngs)
        self.cross_norm = None if self.parallel else Norm(cfg, rngs)
        self.cross_attention = Attention(cfg, rngs)
        self.mlp_norm = None if self.parallel else Norm(cfg, rngs)
        self.mlp = MLP(cfg, rngs)

    def __call__(self, x_btd, positions_bt, segment_ids_bt, memory_bsd, cross_mask, rng=None):
        def attend(h_btd):
            return self.self_attention(h_btd, positions_bt, segment_ids_bt, _fold(rng, 0)), None

        def cross(h_btd):
            return self.cross_attention.cross(h_btd, memory_bsd, cross_mask, _fold(rng, 2))
        return self._residual(x_btd, attend, cross, rng)[0]

    def decode(self, x_btd, positions_bt, cache: dict, step: CacheStep, cross_mask, layer):
        """The block (layer ``layer``) on new tokens: self-attention over the stack's cache,
        cross-attention over the layer's memory keys and values. Returns (x, updated cache)."""
        def attend(h_btd):
            return self.self_attention.cached(h_btd, positions_bt, cache["self"], step, layer)

        def cross(h_btd):
            memory_kv = jax.tree.map(lambda c: jax.lax.dynamic_index_in_dim(c, layer, 0, keepdims=False),
                                     cache["cross"])
            return self.cross_attention.cross_cached(h_btd, memory_kv, cross_mask)
        x_btd, self_kv = self._residual(x_btd, attend, cross, None)
        return x_btd, {"self": self_kv, "cross": cache["cross"]}

    def _residual(self, x_btd, attend, cross, rng):
        """Norms, residual adds and MLP around ``attend(h) -> (output, aux)`` and ``cross(h)``."""
        h_btd = self.self_norm(x_btd)
        self_btd, aux = attend(h_btd)
        if self.parallel:
            x_btd = x_btd + self_btd + cross(h_btd) + self.mlp(h_btd, _fold(rng, 1))
        else:
            x_btd = x_btd + self_btd
            x_btd = x_btd + cross(self.cross_norm(x_btd))
            x_btd = x_btd + self.mlp(self.mlp_norm(x_btd), _fold(rng, 1))
        return constrain(x_btd, _X_AXES), aux


def _stack(cfg: ModelConfig, rngs: nnx.Rngs, count: int, block_cls):
    if cfg.scan_layers:
        return make_stacked_blocks(cfg, rngs, count, block_cls)
    return nnx.List([block_cls(cfg, rngs) for _ in range(count)])


def _run(cfg: ModelConfig, blocks, x, call, count: int):
    """x through ``blocks`` (a list, or a scanned stack): ``call(block, x, index) -> x``."""
    def apply_block(block_state, x, index):
        return call(nnx.merge(graphdef, block_state), x, index)
    apply_block = remat(cfg, apply_block)
    if cfg.scan_layers:
        graphdef, stacked_state = nnx.split(blocks)
        return scan_blocks(apply_block, stacked_state, x, count)
    for index, block in enumerate(blocks):
        graphdef, block_state = nnx.split(block)
        x = apply_block(block_state, x, index)
    return x


def _map_layers(cfg: ModelConfig, blocks, fn):
    """``fn(block)`` for every block of a list or scanned stack, stacked on a leading axis."""
    if cfg.scan_layers:
        graphdef, stacked_state = nnx.split(blocks)
        return jax.lax.map(lambda state: fn(nnx.merge(graphdef, state)), stacked_state)
    return jax.tree.map(lambda *layers: jnp.stack(layers), *[fn(block) for block in blocks])


def _default(values, tokens):
    """Positions 0..T-1 / one segment per row when a caller gives none."""
    if values == "positions":
        return jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    return jnp.ones(tokens.shape, jnp.int32)


class EncoderDecoder(SlotCache, nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = Embed(cfg.vocab_size, cfg, rngs)
        self.position_embedding = position_table(cfg, rngs)
        self.encoder_blocks = _stack(cfg, rngs, cfg.encoder_layers, Block)
        self.encoder_norm = Norm(cfg, rngs)
        self.decoder_blocks = _stack(cfg, rngs, cfg.num_layers, DecoderBlock)
        self.final_norm = Norm(cfg, rngs)
        self.head = (None if cfg.tie_embeddings else
                     Dense((cfg.d_model,), (cfg.vocab_size,), ("embed",), ("vocab",), cfg=cfg, rngs=rngs))

    def encode(self, tokens_bs, positions_bs=None, segment_ids_bs=None, dropout_rng=None):
        """Encoder output [B, S, D] (after its final norm)."""
        positions_bs = _default("positions", tokens_bs) if positions_bs is None else positions_bs
        segment_ids_bs = _default("segments", tokens_bs) if segment_ids_bs is None else segment_ids_bs
        x_bsd = embed_tokens(self.cfg, self.embed, self.position_embedding, tokens_bs, positions_bs,
                             _fold(dropout_rng, 0))
        everywhere = jnp.ones_like(tokens_bs)  # bidirectional within each segment
        layers_rng = _fold(dropout_rng, 1)
        x_bsd = _run(self.cfg, self.encoder_blocks, x_bsd,
                     lambda block, x, i: block(x, positions_bs, segment_ids_bs, _fold(layers_rng, i),
                                               everywhere),
                     self.cfg.encoder_layers)
        return self.encoder_norm(x_bsd)

    def decode(self, memory_bsd, encoder_segment_ids_bs, tokens_bt, positions_bt=None,
               segment_ids_bt=None, dropout_rng=None):
        """Logits [B, T, V] of the decoder reading ``tokens_bt`` against the encoder memory."""
        positions_bt = _default("positions", tokens_bt) if positions_bt is None else positions_bt
        segment_ids_bt = _default("segments", tokens_bt) if segment_ids_bt is None else segment_ids_bt
        cross = masks.cross_mask(segment_ids_bt, encoder_segment_ids_bs)
        x_btd = embed_tokens(self.cfg, self.embed, self.position_embedding, tokens_bt, positions_bt,
                             _fold(dropout_rng, 2))
        layers_rng = _fold(dropout_rng, 3)
        x_btd = _run(self.cfg, self.decoder_blocks, x_btd,
                     lambda block, x, i: block(x, positions_bt, segment_ids_bt, memory_bsd, cross,
                                               _fold(layers_rng, i)),
                     self.cfg.num_layers)
        return self._logits(x_btd)

    def forward(self, batch: dict, packed: bool = False,
                dropout_rng: Optional[jax.Array] = None) -> jax.Array:
        """Logits [B, T, V] of a batch; the segment ids are always read (rows may be padded)."""
        del packed
        return self(batch["encoder_inputs"], batch["inputs"], batch["encoder_positions"],
                    batch["positions"], batch["encoder_segment_ids"], batch["segment_ids"],
                    dropout_rng)

    def _start_cache(self, inputs: dict, cache: dict) -> dict:
        """Encodes the prompts (right-padded encoder inputs) once: each decoder layer's
        cross-attention keys and values of the memory, stacked [L, B, ...], and its mask."""
        segments_bs = inputs["encoder_segments"]
        memory_bsd = self.encode(inputs["encoder_tokens"], None, segments_bs)
        cross = _map_layers(self.cfg, self.decoder_blocks,
                            lambda block: block.cross_attention.memory_kv(memory_bsd))
        return {**cache, "cross": cross, "cross_mask": (segments_bs == 1)[:, None, None, :]}

    def _decode_slots(self, tokens_bt, positions_bt, cache: dict, step: CacheStep):
        logits_btv, layers = self.decode_cached(tokens_bt, positions_bt, cache, step,
                                                cache["cross_mask"])
        return logits_btv, layers["self"]

    def decode_cached(self, tokens_bt: jax.Array, positions_bt: jax.Array, cache: dict,
                      step: CacheStep, cross_mask_b1ts: jax.Array) -> tuple[jax.Array, dict]:
        """Logits [B, T, V] of T new decoder tokens over the cache ``{"self", "cross"}``, and
        the updated cache."""
        x_btd = embed_tokens(self.cfg, self.embed, self.position_embedding, tokens_bt, positions_bt,
                             None)

        def call(block, x, cache, index):
            return block.decode(x, positions_bt, cache, step, cross_mask_b1ts, index)

        layers = {"self": cache["self"], "cross": cache["cross"]}
        x_btd, layers = run_stack_cached(self.decoder_blocks, self.cfg.scan_layers, x_btd, layers,
                                         call, self.cfg.num_layers)
        return self._logits(x_btd), layers

    def _logits(self, x_btd):
        return project_logits(self.final_norm, self.embed, self.head, x_btd)

    def __call__(self, encoder_tokens_bs: jax.Array, decoder_tokens_bt: jax.Array,
                 encoder_positions_bs: Optional[jax.Array] = None,
                 decoder_positions_bt: Optional[jax.Array] = None,
                 encoder_segment_ids_bs: Optional[jax.Array] = None,
                 decoder_segment_ids_bt: Optional[jax.Array] = None,
                 dropout_rng: Optional[jax.Array] = None) -> jax.Array:
        """Logits [B, T, V]; segment ids default to one example per row (no padding)."""
        if encoder_segment_ids_bs is None:
            encoder_segment_ids_bs = _default("segments", encoder_tokens_bs)
        memory_bsd = self.encode(encoder_tokens_bs, encoder_positions_bs, encoder_segment_ids_bs,
                                 dropout_rng)
        return self.decode(memory_bsd, encoder_segment_ids_bs, decoder_tokens_bt, decoder_positions_bt,
                           decoder_segment_ids_bt, dropout_rng)
