"""Every attention mask of every architecture, in one place, as boolean [B, 1, T, S] arrays
(query t may see key s). ``masks_for`` returns the masks a batch gets, for inspection.

  causal decoder    j <= i within a segment
  prefix decoder    j <= i, or both i and j in the segment's prefix (``bidirectional`` = 1)
  encoder           i and j in the same segment (padding, segment 0, sees only padding)
  cross-attention   decoder segment of i == encoder segment of j
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp


def attention_mask(segment_ids_bt: Optional[jax.Array], length: int,
                   bidirectional_bt: Optional[jax.Array] = None) -> Optional[jax.Array]:
    """Self-attention mask of a decoder, or None for plain causal attention (no segments, no
    prefix). Within one packed segment: j <= i (causal), or both i and j in the segment's prefix
    (``bidirectional_bt`` = 1), which makes a prefix LM; all ones makes an encoder."""
    if segment_ids_bt is None and bidirectional_bt is None:
        return None
    visible_btt = jnp.tril(jnp.ones((length, length), dtype=bool))[None]
    if bidirectional_bt is not None:
        prefix_bt = bidirectional_bt.astype(bool)
        visible_btt = visible_btt | (prefix_bt[:, :, None] & prefix_bt[:, None, :])
    if segment_ids_bt is not None:
        visible_btt = visible_btt & (segment_ids_bt[:, :, None] == segment_ids_bt[:, None, :])
    return visible_btt[:, None]


def encoder_mask(segment_ids_bs: jax.Array) -> jax.Array:
    """Bidirectional self-attention within each segment."""
    return (segment_ids_bs[:, :, None] == segment_ids_bs[:, None, :])[:, None]


def cross_mask(decoder_segment_ids_bt: jax.Array, encoder_segment_ids_bs: jax.Array) -> jax.Array:
    """Decoder position i sees encoder position j of the same (packed) example."""
    return (decoder_segment_ids_bt[:, :, None] == encoder_segment_ids_bs[:, None, :])[:, None]


def masks_for(arch: str, batch: dict) -> dict[str, jax.Array]:
    """The masks a batch of ``arch`` attends with, materialised (causal ones included)."""
    length = batch["inputs"].shape[1]
    segments = batch.get("segment_ids")
    if segments is None:
        segments = jnp.ones(batch["inputs"].shape, jnp.int32)
    if arch == "encoder_decoder":
        return {"encoder": encoder_mask(batch["encoder_segment_ids"]),
                "decoder": attention_mask(segments, length),
                "cross": cross_mask(segments, batch["encoder_segment_ids"])}
    if arch == "encoder":
        return {"self": encoder_mask(segments)}
    prefix = batch.get("bidirectional") if arch == "prefix_decoder" else None
    return {"self": attention_mask(segments, length, prefix)}
