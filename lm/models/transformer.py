"""Decoder-only Transformer (GPT / PaLM family) as a Flax NNX module.

  tokens [B, T] -> embed (+ learned/sinusoidal positions) -> N blocks -> norm -> logits [B, T, V]

A block is serial (pre-norm GPT: x + attn(n1(x)), then + mlp(n2(x))) or parallel (PaLM:
x + attn(n(x)) + mlp(n(x))). Layers are a list, or stacked on a leading 'layers' axis and run
with ``lax.scan`` (``scan_layers``) so that compile time does not grow with depth, or, with
``pipeline_stages`` > 1, stacked [stages, layers] ([repeats, stages, layers] when circular) and
run by the pipeline schedule of ``lm/parallel/pipeline.py``. Every way a block runs through one
pure function of (block state, x), so remat applies identically, and every form starts from the
same weights for a seed (layer l of a stack holds the values of the list's block l), so layouts
compare with the plain one-device model.

Decoding (lm/infer/decode.py) goes through the protocol of lm/models/decoding.py (``init_cache``,
``prefill``, ``decode_step``), which calls ``decode`` with a key/value cache stacked on a leading
layers axis [L, B, G, S, K] for every kind of stack; a pipelined stack decodes as its L layers in
turn.

The cached path also takes a dropout rng, so that a training forward may run through a cache
(one that starts with learned key/value slots, say, whose mask lets every token see them).
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from lm.models import positions as pos
from lm.models.attention import Attention, CacheStep
from lm.models.config import ModelConfig
from lm.models.decoding import SlotCache
from lm.models.layers import MLP, Dense, Embed, Norm, dropout, keys_drawn, layer_rngs, param
from lm.parallel.axes import constrain
from lm.parallel.pipeline import pipeline_apply

# The residual stream has its own length name so that sequence parallelism can shard it
# between blocks (Megatron-SP) while attention and MLP see whole sequences.
_X_AXES = ("activation_batch", "activation_norm_length", "activation_embed")
_LOGIT_AXES = ("activation_batch", "activation_length", "activation_vocab")

REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "minimal": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _fold(rng: Optional[jax.Array], i) -> Optional[jax.Array]:
    return None if rng is None else jax.random.fold_in(rng, i)


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.parallel = cfg.block == "parallel"
        self.attn_norm = Norm(cfg, rngs)
        self.attention = Attention(cfg, rngs)
        self.mlp_norm = None if self.parallel else Norm(cfg, rngs)
        self.mlp = MLP(cfg, rngs)

    def __call__(self, x_btd, positions_bt, segment_ids_bt=None, rng=None, bidirectional_bt=None):
        def attend(h_btd):
            return self.attention(h_btd, positions_bt, segment_ids_bt, _fold(rng, 0),
                                  bidirectional_bt), None
        return self._residual(x_btd, attend, rng)[0]

    def decode(self, x_btd, positions_bt, kv: dict, step: CacheStep, layer, rng=None):
        """The block (layer ``layer``) on new tokens with the stack's key/value cache: (x, cache).
        ``rng``: dropout, with the streams of ``__call__``."""
        return self._residual(
            x_btd, lambda h_btd: self.attention.cached(h_btd, positions_bt, kv, step, layer,
                                                       _fold(rng, 0)),
            rng)

    def _residual(self, x_btd, attend, rng):
        """Norms, residual adds and MLP around ``attend(h_btd) -> (attention output, aux)``."""
        h_btd = self.attn_norm(x_btd)
        attn_btd, aux = attend(h_btd)
        if self.parallel:
            x_btd = x_btd + attn_btd + self.mlp(h_btd, _fold(rng, 1))
        else:
            x_btd = x_btd + attn_btd
            x_btd = x_btd + self.mlp(self.mlp_norm(x_btd), _fold(rng, 1))
        return constrain(x_btd, _X_AXES), aux


def make_stacked_blocks(cfg: ModelConfig, rngs: nnx.Rngs, count: int = 0, block_cls=Block):
    """``count`` (default num_layers) blocks whose parameters share a leading axis 'layers'.

    Built at once under vmap, with the initial values of the list ``[block_cls(cfg, rngs) for _
    in range(count)]`` stacked: layer l draws the keys it would draw as the l-th of the list, so
    a scanned or pipelined model starts where the one with a list of layers does."""
    def make_block(block_rngs):
        return block_cls(cfg, block_rngs)
    make_stack = nnx.vmap(make_block, in_axes=(0,), out_axes=0,
                          transform_metadata={nnx.PARTITION_NAME: "layers"})
    return make_stack(layer_rngs(rngs, count or cfg.num_layers, keys_drawn(make_block)))


def scan_blocks(apply_block, stacked_state, x, num_layers: int):
    """x through a stack: ``apply_block(block_state, x, index)`` under lax.scan."""
    def body(x, layer):
        block_state, index = layer
        return apply_block(block_state, x, index), None
    return jax.lax.scan(body, x, (stacked_state, jnp.arange(num_layers)))[0]


def scan_blocks_cached(apply_block, stacked_state, x, cache, num_layers: int):
    """x through a stack whose cache is stacked over its layers: ``apply_block(block_state, x,
    cache, index) -> (x, cache)`` under lax.scan, the whole cache carried (updated in place)."""
    def body(carry, layer):
        block_state, index = layer
        return apply_block(block_state, *carry, index), None
    return jax.lax.scan(body, (x, cache), (stacked_state, jnp.arange(num_layers)))[0]


def run_list_cached(blocks, x, cache, call):
    """x through a list of blocks: ``call(block, x, cache, index) -> (x, cache)``."""
    for index, block in enumerate(blocks):
        x, cache = call(block, x, cache, index)
    return x, cache


def run_stack_cached(blocks, scanned: bool, x, cache, call, num_layers: int, to_layer_stack=None):
    """x through a list or a scanned stack of blocks with a cache stacked over the layers:
    ``call(block, x, cache, index) -> (x, cache)``; ``to_layer_stack`` reshapes stacked
    parameters to [L, ...] first (a pipelined stack)."""
    if not scanned:
        return run_list_cached(blocks, x, cache, call)
    graphdef, stacked_state = nnx.split(blocks)
    if to_layer_stack is not None:
        stacked_state = to_layer_stack(stacked_state)
    return scan_blocks_cached(
        lambda state, x, cache, index: call(nnx.merge(graphdef, state), x, cache, index),
        stacked_state, x, cache, num_layers)


def project_logits(final_norm, embed, head, x_btd):
    """The final norm, then the tied embedding (``head`` None) or the head: logits [B, T, V]."""
    return unembed(embed, head, final_norm(x_btd))


def unembed(embed, head, normed_btd):
    """Logits [B, T, V] of final-norm hidden states: the tied embedding or the output head."""
    logits_btv = embed.attend(normed_btd) if head is None else head(normed_btd)
    return constrain(logits_btv, _LOGIT_AXES)


def remat(cfg: ModelConfig, fn):
    """``fn`` rematerialised by the configured policy (or unchanged)."""
    if cfg.remat == "none":
        return fn
    return jax.checkpoint(fn, policy=REMAT_POLICIES[cfg.remat])


def _pipeline_lead(cfg: ModelConfig) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """Leading shape and axis names of pipelined block parameters: [S, Lp] or [R, S, Lp]."""
    lead, names = (cfg.pipeline_stages, cfg.layers_per_stage), ("stage", "layers")
    if cfg.pipeline_repeats > 1:
        lead, names = (cfg.pipeline_repeats, *lead), ("circular_repeats", *names)
    return lead, names


def block_stack_axes(cfg: ModelConfig) -> int:
    """Leading axes that stack the blocks' parameters: 0 (a list of blocks), 1 ([L],
    scan_layers), 2 ([S, Lp], pipelined) or 3 ([R, S, Lp], circular)."""
    if cfg.pipelined:
        return len(_pipeline_lead(cfg)[0])
    return 1 if cfg.scan_layers else 0


def _make_pipelined_blocks(cfg: ModelConfig, rngs: nnx.Rngs) -> Block:
    """The stacked blocks (the initial values of the list) with layer l = (r*S + s)*Lp + j
    moved to [s, j] ('stage', 'layers', ...) or, circular, to [r, s, j] ('circular_repeats',
    'stage', 'layers', ...): a plain reshape of the leading axis."""
    blocks = make_stacked_blocks(cfg, rngs)
    lead, names = _pipeline_lead(cfg)
    for _, node in nnx.iter_graph(blocks):
        if isinstance(node, nnx.Variable):
            value = node.get_value()
            node.set_value(value.reshape(*lead, *value.shape[1:]))
            # Replaces the leading 'layers' that the stacking named.
            node.set_metadata(out_sharding=names + node.get_metadata()["out_sharding"][1:])
    return blocks


def _pipeline_to_layer_stack(stacked_state, cfg: ModelConfig):
    """[S, Lp, ...] or [R, S, Lp, ...] -> [L, ...]; layer l keeps its index."""
    lead = block_stack_axes(cfg)
    return jax.tree.map(lambda w: w.reshape(cfg.num_layers, *w.shape[lead:]), stacked_state)


def position_table(cfg: ModelConfig, rngs: nnx.Rngs):
    """The learned position embedding [max_len, d_model], or None for other encodings."""
    if cfg.positions != "learned":
        return None
    return param(rngs, jax.nn.initializers.normal(cfg.init_std), (cfg.max_len, cfg.d_model),
                 ("position", "embed"), cfg.param_dtype)


def embed_tokens(cfg: ModelConfig, embed: Embed, table, tokens_bt, positions_bt, rng):
    """Token embeddings plus absolute positions (learned or sinusoidal), then dropout."""
    return add_positions(cfg, table, embed(tokens_bt), positions_bt, rng)


def add_positions(cfg: ModelConfig, table, x_btd, positions_bt, rng):
    """Embeddings (of tokens, or a soft prompt) plus absolute positions, then dropout.

    With the fixed sinusoids (amplitude 1) the token embeddings are multiplied by sqrt(d_model),
    as in Vaswani et al. 3.4: unscaled, embeddings initialised at std 0.02 are drowned by the
    position signal and the model learns far more slowly (docs/results/ablations/positions)."""
    if cfg.positions == "learned":
        x_btd = x_btd + jnp.take(table[...].astype(x_btd.dtype), positions_bt, axis=0)
    elif cfg.positions == "sinusoidal":
        x_btd = x_btd * jnp.sqrt(jnp.asarray(cfg.d_model, x_btd.dtype))
        x_btd = x_btd + pos.sinusoidal(positions_bt, cfg.d_model).astype(x_btd.dtype)
    return constrain(dropout(x_btd, cfg.dropout, rng), _X_AXES)


class Decoder(SlotCache, nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = Embed(cfg.vocab_size, cfg, rngs)
        self.position_embedding = position_table(cfg, rngs)
        if cfg.pipelined:
            self.blocks = _make_pipelined_blocks(cfg, rngs)
        elif cfg.scan_layers:
            self.blocks = make_stacked_blocks(cfg, rngs)
        else:
            self.blocks = nnx.List([Block(cfg, rngs) for _ in range(cfg.num_layers)])
        self.final_norm = Norm(cfg, rngs)
        self.head = (None if cfg.tie_embeddings else
                     Dense((cfg.d_model,), (cfg.vocab_size,), ("embed",), ("vocab",), cfg=cfg, rngs=rngs))

    def __call__(self, tokens_bt: jax.Array, positions_bt: Optional[jax.Array] = None,
                 segment_ids_bt: Optional[jax.Array] = None,
                 dropout_rng: Optional[jax.Array] = None,
                 bidirectional_bt: Optional[jax.Array] = None) -> jax.Array:
        """Logits [B, T, V] in the compute dtype. ``dropout_rng=None`` means deterministic;
        ``bidirectional_bt`` marks prefix tokens that see each other (prefix LM). An encoder
        (arch 'encoder') attends in both directions within each segment."""
        if self.cfg.arch == "encoder":
            bidirectional_bt = jnp.ones_like(tokens_bt)
        if positions_bt is None:
            positions_bt = jnp.broadcast_to(jnp.arange(tokens_bt.shape[1]), tokens_bt.shape)
        x_btd = self._embed(tokens_bt, positions_bt, _fold(dropout_rng, 0))
        x_btd = self._run_blocks(x_btd, positions_bt, segment_ids_bt, _fold(dropout_rng, 1),
                                 bidirectional_bt)
        return self._logits(x_btd)

    def forward(self, batch: dict, packed: bool = False,
                dropout_rng: Optional[jax.Array] = None) -> jax.Array:
        """Logits [B, T, V] of a batch: inputs, positions, segment_ids when packed, and a prefix
        decoder's ``bidirectional`` prefix marks."""
        segment_ids = batch["segment_ids"] if packed else None
        prefix = batch.get("bidirectional") if self.decoding.bidirectional_prompt else None
        return self(batch["inputs"], batch["positions"], segment_ids, dropout_rng, prefix)

    def forward_features(self, batch: dict, packed: bool = False,
                         dropout_rng: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
        """(logits [B, T, V], the final-norm hidden states [B, T, D] they are projected from)
        of a causal decoder's batch, for heads that read the hidden states (lm.models.heads)."""
        if self.cfg.arch != "decoder":
            raise ValueError(f"hidden-state heads need config.model.arch='decoder', not {self.cfg.arch!r}")
        segment_ids = batch["segment_ids"] if packed else None
        x_btd = self._embed(batch["inputs"], batch["positions"], _fold(dropout_rng, 0))
        x_btd = self._run_blocks(x_btd, batch["positions"], segment_ids, _fold(dropout_rng, 1))
        hidden_btd = self.final_norm(x_btd)
        return unembed(self.embed, self.head, hidden_btd), hidden_btd

    def _decode_slots(self, tokens_bt, positions_bt, cache: dict, step: CacheStep):
        return self.decode(tokens_bt, positions_bt, cache["self"], step)

    def decode(self, tokens_bt: jax.Array, positions_bt: jax.Array, cache: dict,
               step: CacheStep, dropout_rng: Optional[jax.Array] = None) -> tuple[jax.Array, dict]:
        """Logits [B, T, V] of T new tokens (a whole prompt, or one token) that attend over the
        cache as ``step`` says; returns them with the cache holding the new keys and values.
        ``dropout_rng`` (None when decoding) has the streams of ``__call__``."""
        x_btd = self._embed(tokens_bt, positions_bt, _fold(dropout_rng, 0))
        x_btd, cache = self.run_cached(x_btd, positions_bt, cache, step, _fold(dropout_rng, 1))
        return self._logits(x_btd), cache

    def run_cached(self, x_btd, positions_bt, cache, step: CacheStep, rng=None):
        """Embedded inputs ``x_btd`` through the blocks over the cache: (x, cache)."""
        def call(block, x, cache, index):
            return block.decode(x, positions_bt, cache, step, index, _fold(rng, index))

        to_layers = (lambda state: _pipeline_to_layer_stack(state, self.cfg)) if self.cfg.pipelined else None
        return run_stack_cached(self.blocks, self.cfg.scan_layers or self.cfg.pipelined, x_btd,
                                cache, call, self.cfg.num_layers, to_layers)

    def _logits(self, x_btd):
        return project_logits(self.final_norm, self.embed, self.head, x_btd)

    def _embed(self, tokens_bt, positions_bt, rng):
        return embed_tokens(self.cfg, self.embed, self.position_embedding, tokens_bt, positions_bt, rng)

    def _run_blocks(self, x_btd, positions_bt, segment_ids_bt, rng, bidirectional_bt=None):
        if self.cfg.pipelined and x_btd.shape[0] % self.cfg.microbatches == 0:
            return self._run_pipelined(x_btd, positions_bt, segment_ids_bt, rng, bidirectional_bt)

        def apply_block(block_state, x, index):
            block = nnx.merge(graphdef, block_state)
            return block(x, positions_bt, segment_ids_bt, _fold(rng, index), bidirectional_bt)

        apply_block = remat(self.cfg, apply_block)
        if self.cfg.scan_layers or self.cfg.pipelined:
            graphdef, stacked_state = nnx.split(self.blocks)
            if self.cfg.pipelined:
                # A batch that does not split into the microbatches (sampling one sequence, say)
                # runs the pipeline's stack as the L layers it is, one after another.
                stacked_state = _pipeline_to_layer_stack(stacked_state, self.cfg)
            return scan_blocks(apply_block, stacked_state, x_btd, self.cfg.num_layers)
        for index, block in enumerate(self.blocks):
            graphdef, block_state = nnx.split(block)
            x_btd = apply_block(block_state, x_btd, index)
        return x_btd

    def _run_pipelined(self, x_btd, positions_bt, segment_ids_bt, rng, bidirectional_bt=None):
        graphdef, stacked_state = nnx.split(self.blocks)

        def apply_layer(block_state, x, rows, layer, microbatch):
            # Dropout masks are drawn per (layer, microbatch): the same distribution as the
            # sequential model's per-layer masks over the whole batch, not the same bits.
            block = nnx.merge(graphdef, block_state)
            return block(x, rows["positions"], rows["segment_ids"],
                         _fold(_fold(rng, layer), microbatch), rows["bidirectional"])

        rows = {"positions": positions_bt, "segment_ids": segment_ids_bt,
                "bidirectional": bidirectional_bt}
        return pipeline_apply(remat(self.cfg, apply_layer), stacked_state, x_btd, rows,
                              stages=self.cfg.pipeline_stages,
                              microbatches=self.cfg.microbatches,
                              repeats=self.cfg.pipeline_repeats)
