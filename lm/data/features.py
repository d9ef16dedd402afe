"""Packed feature conversion for (inputs, targets) pairs: prefix LM and encoder-decoder.
(Unpacked conversion of corpus windows for every objective: lm/data/objectives.py.)

A prefix-LM example is a pair (inputs, targets): the model reads ``inputs ++ targets`` shifted
right, attends bidirectionally over the prefix and causally over the target, and is scored on the
target tokens only (seqio's ``PrefixLMFeatureConverter`` rules). Pairs are packed several to a
row like causal-LM documents, with segment ids and positions so that nothing crosses examples.
"""
from __future__ import annotations

import numpy as np

from lm.data.windows import Batch, pack_examples, packed_batch


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


def _row_fields(sequences: list[np.ndarray], length: int) -> dict[str, np.ndarray]:
    """tokens, segment ids (1, 2, ... per sequence; 0 on padding) and positions of one row."""
    tokens = np.zeros(length, np.int32)
    segments = np.zeros(length, np.int32)
    positions = np.zeros(length, np.int32)
    start = 0
    for segment, sequence in enumerate(sequences, start=1):
        end = start + len(sequence)
        tokens[start:end], segments[start:end], positions[start:end] = sequence, segment, np.arange(len(sequence))
        start = end
    return {"tokens": tokens, "segment_ids": segments, "positions": positions}


def pack_encoder_decoder(pairs: list[tuple[np.ndarray, np.ndarray]], encoder_length: int,
                         decoder_length: int) -> Batch:
    """Packed encoder-decoder rows (seqio ``EncDecFeatureConverter(pack=True)`` fields): example
    k of a row is segment k on both sides, so decoder tokens cross-attend only to their own
    inputs; decoder inputs are the targets shifted right behind 0 within each segment."""
    rows: list[list[tuple[np.ndarray, np.ndarray]]] = [[]]
    used = [0, 0]
    for inputs, targets in pairs:
        if len(inputs) > encoder_length or len(targets) > decoder_length or not len(targets):
            raise ValueError(f"an encoder-decoder example of {len(inputs)} -> {len(targets)} tokens "
                             f"does not fit rows of {encoder_length} -> {decoder_length}")
        if used[0] + len(inputs) > encoder_length or used[1] + len(targets) > decoder_length:
            rows.append([])
            used = [0, 0]
        rows[-1].append((inputs, targets))
        used = [used[0] + len(inputs), used[1] + len(targets)]
    encoder = [_row_fields([i for i, _ in row], encoder_length) for row in rows]
    targets = [_row_fields([t for _, t in row], decoder_length) for row in rows]
    shifted = [_row_fields([np.concatenate([[0], t[:-1]]) for _, t in row], decoder_length)
               for row in rows]
    stack = lambda fields, key: np.stack([f[key] for f in fields])  # noqa: E731
    return {"encoder_inputs": stack(encoder, "tokens"), "encoder_segment_ids": stack(encoder, "segment_ids"),
            "encoder_positions": stack(encoder, "positions"), "inputs": stack(shifted, "tokens"),
            "targets": stack(targets, "tokens"), "segment_ids": stack(targets, "segment_ids"),
            "positions": stack(targets, "positions"),
            "weights": (stack(targets, "segment_ids") > 0).astype(np.float32)}
