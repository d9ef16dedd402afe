"""Batch -> logits for every architecture: each model's ``forward`` says which fields it reads.

  decoder / lstm    inputs (segment_ids and positions when packed)
  prefix_decoder    + bidirectional: the prefix positions of each example
  encoder           inputs attended in both directions within each segment
  encoder_decoder   encoder_inputs / encoder_positions / encoder_segment_ids, and the decoder's
                    inputs / positions / segment_ids (always present: rows may be padded)
"""
from __future__ import annotations

from typing import Optional

import jax

ENCODER_KEYS = ("encoder_inputs", "encoder_positions", "encoder_segment_ids")


def apply_batch(model, batch: dict, packed: bool = False,
                dropout_rng: Optional[jax.Array] = None) -> jax.Array:
    """Logits [B, T, V] of ``model`` (built by lm.models.build) on one batch."""
    return model.forward(batch, packed, dropout_rng)
