"""Feature conversion for objectives beyond plain causal LM.

A prefix-LM example is a pair (inputs, targets): the model reads ``inputs ++ targets`` shifted
right, attends bidirectionally over the prefix and causally over the target, and is scored on the
target tokens only (seqio's ``PrefixLMFeatureConverter`` rules). Pairs are packed several to a
row like causal-LM documents, with segment ids and positions so that nothing crosses examples.
"""
from __future__ import annotations

import numpy as np

from lm.data.pipeline import Batch, pack_examples, packed_batch


def _pack_parallel(sequences: list[np.ndarray], length: int) -> np.ndarray:
    """Packs per-token values laid out exactly like ``pack_examples`` lays out the tokens."""
    return pack_examples(sequences, length)[0]


def pack_prefix_lm(pairs: list[tuple[np.ndarray, np.ndarray]], length: int) -> Batch:
    """Rows of packed prefix-LM examples: the usual fields plus ``bidirectional`` [B, T].

    Position p of an example predicts token p of ``inputs ++ targets``; the prefix the model may
    see in both directions is positions 0 .. len(inputs) (the shifted-in BOS and every input
    token), and the loss covers positions len(inputs) ... (every target token).
    """
    for inputs, targets in pairs:
        if len(targets) == 0 or len(inputs) + len(targets) > length:
            raise ValueError(f"a prefix-LM example of {len(inputs)} + {len(targets)} tokens does "
                             f"not fit a row of {length}; trim it or raise the sequence length")
    sequences = [np.concatenate([i, t]).astype(np.int32) for i, t in pairs]
    targets_bt, positions_bt = pack_examples(sequences, length)
    # Token values are offset by one so that 'no' (0) is not mistaken for padding by the packer.
    prefix = [np.where(np.arange(len(i) + len(t)) <= len(i), 2, 1) for i, t in pairs]
    scored = [np.where(np.arange(len(i) + len(t)) >= len(i), 2, 1) for i, t in pairs]
    batch = packed_batch(targets_bt, positions_bt)
    batch["bidirectional"] = (_pack_parallel(prefix, length) == 2).astype(np.int32)
    batch["weights"] = batch["weights"] * (_pack_parallel(scored, length) == 2)
    return batch
