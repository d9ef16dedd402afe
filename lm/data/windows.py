"""Windows and packing: token arrays in, ``Batch`` dicts out (base layer of ``lm.data``).

Pure NumPy on token arrays; nothing here reads a config or a corpus. A leaf of ``lm.data``: it
imports no module of the package but ``vocab`` (for the PAD id), and the row functions of
``lm.data.batches``, every backend and ``features`` build their batches from these functions.

Every batch is a dict of the five arrays of ``BATCH_KEYS``, each of shape [batch, seq_len]:
  inputs (int32), targets (int32), weights (float32, 0 on padding),
  segment_ids (int32, 0 on padding), positions (int32, position inside the segment).
"""
from __future__ import annotations

import numpy as np

from lm.configlib import ConfigError
from lm.data import vocab as vocab_lib

Batch = dict[str, np.ndarray]
BATCH_KEYS = ("inputs", "targets", "weights", "segment_ids", "positions")


# ----------------------------------------------------------------------------- randomness

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x_u64: np.ndarray) -> np.ndarray:
    """SplitMix64's output function: a bijective 64-bit mix, vectorized."""
    z = x_u64.astype(np.uint64)
    with np.errstate(over="ignore"):  # the arithmetic is meant to wrap modulo 2**64
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def hashed_ints(seed: int, index_n: np.ndarray, high: int) -> np.ndarray:
    """A uniform draw in [0, high) for each index: counter-based, so any index is O(1)."""
    key = _splitmix64(np.array([seed % 2**64], dtype=np.uint64))
    with np.errstate(over="ignore"):
        counters = key + (np.asarray(index_n, dtype=np.uint64) + np.uint64(1)) * _GOLDEN
    # The modulo bias is below high / 2**64, far below anything measurable.
    return (_splitmix64(counters) % np.uint64(high)).astype(np.int64)


# ----------------------------------------------------------------------------- windows

def _check_window_fits(tokens: np.ndarray, seq_len: int, split: str) -> None:
    if len(tokens) < seq_len + 1:
        raise ConfigError(f"the {split} split has {len(tokens)} tokens, fewer than "
                          f"config.data.seq_len + 1 = {seq_len + 1}; lower seq_len or use a "
                          f"larger corpus.")


def train_windows(tokens: np.ndarray, seq_len: int, seed: int, rows_n: np.ndarray) -> np.ndarray:
    """Windows [len(rows), seq_len + 1] of the train stream rows ``rows_n`` (nanoGPT offsets)."""
    _check_window_fits(tokens, seq_len, "train")
    offsets_n = hashed_ints(seed, rows_n, len(tokens) - seq_len)
    return tokens[offsets_n[:, None] + np.arange(seq_len + 1)]


def validation_windows(tokens: np.ndarray, seq_len: int) -> np.ndarray:
    """All disjoint windows [K, seq_len + 1] of the split: window k starts at k * seq_len."""
    _check_window_fits(tokens, seq_len, "validation")
    num_windows = (len(tokens) - 1) // seq_len
    return tokens[np.arange(num_windows)[:, None] * seq_len + np.arange(seq_len + 1)]


def evenly_spaced(num_available: int, num_wanted: int) -> np.ndarray:
    """``num_wanted`` indices spread evenly over [0, num_available), ends included."""
    return np.round(np.linspace(0, num_available - 1, num_wanted)).astype(np.int64)


def windows_to_batch(windows_bt1: np.ndarray) -> Batch:
    """nanoGPT's (x, y) = (window[:-1], window[1:]); every token is real, one segment per row."""
    batch, length = windows_bt1.shape[0], windows_bt1.shape[1] - 1
    return {
        "inputs": np.ascontiguousarray(windows_bt1[:, :-1], dtype=np.int32),
        "targets": np.ascontiguousarray(windows_bt1[:, 1:], dtype=np.int32),
        "weights": np.ones((batch, length), np.float32),
        "segment_ids": np.ones((batch, length), np.int32),
        "positions": np.tile(np.arange(length, dtype=np.int32), (batch, 1)),
    }


# ----------------------------------------------------------------------------- packing

def pack_examples(examples: list[np.ndarray], length: int) -> tuple[np.ndarray, np.ndarray]:
    """Packs token sequences into rows like seqio's ``trim_and_pack_dataset`` (TF ops).

    Examples are trimmed to ``length`` and taken in groups of ``length``; inside a group each
    example joins the current row if it fits, else the row is closed; a group ends its last row.
    Returns targets [rows, length] and positions [rows, length] (0 on padding).
    """
    targets_rows, positions_rows = [], []
    for start in range(0, len(examples), length):
        row: list[np.ndarray] = []
        used = 0  # tokens in the open row
        for example in examples[start:start + length]:
            example = example[:length]
            if used + len(example) > length:
                _close_row(row, length, targets_rows, positions_rows)
                row, used = [], 0
            row.append(example)
            used += len(example)
        _close_row(row, length, targets_rows, positions_rows)
    return np.stack(targets_rows), np.stack(positions_rows)


def _close_row(row, length, targets_rows, positions_rows) -> None:
    targets = np.zeros(length, np.int32)
    positions = np.zeros(length, np.int32)
    tokens = np.concatenate(row) if row else np.zeros(0, np.int32)
    targets[:len(tokens)] = tokens
    if row:
        positions[:len(tokens)] = np.concatenate([np.arange(len(e)) for e in row])
    targets_rows.append(targets)
    positions_rows.append(positions)


def chunk(tokens: np.ndarray, length: int) -> list[np.ndarray]:
    """Consecutive pieces of at most ``length`` tokens."""
    return [tokens[i:i + length] for i in range(0, len(tokens), length)]


def packed_batch(targets_bt: np.ndarray, positions_bt: np.ndarray) -> Batch:
    """Inputs, weights and segment ids of packed rows (seqio ``LMFeatureConverter`` rules)."""
    real_bt = targets_bt != vocab_lib.PAD_ID
    segment_ids_bt = np.cumsum(positions_bt == 0, axis=1, dtype=np.int32) * real_bt
    previous_segment_bt = np.pad(segment_ids_bt[:, :-1], ((0, 0), (1, 0)))
    shifted_bt = np.pad(targets_bt[:, :-1], ((0, 0), (1, 0)))  # BOS is 0
    return {
        "inputs": np.where(segment_ids_bt == previous_segment_bt, shifted_bt, 0).astype(np.int32),
        "targets": targets_bt.astype(np.int32),
        "weights": real_bt.astype(np.float32),
        "segment_ids": segment_ids_bt.astype(np.int32),
        "positions": positions_bt.astype(np.int32),
    }
