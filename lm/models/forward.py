"""Batch -> logits for every architecture: which fields each one reads.

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
    arch = model.cfg.arch
    if arch == "encoder_decoder":
        return model(batch["encoder_inputs"], batch["inputs"], batch["encoder_positions"],
                     batch["positions"], batch["encoder_segment_ids"], batch["segment_ids"],
                     dropout_rng)
    segment_ids = batch["segment_ids"] if packed else None
    prefix = batch.get("bidirectional") if arch == "prefix_decoder" else None
    return model(batch["inputs"], batch["positions"], segment_ids, dropout_rng, prefix)
