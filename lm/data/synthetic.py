"""Backend 'synthetic': hashed random tokens in [3, synthetic_vocab_size), no corpus read.

For benchmarks: row ``j`` of batch ``i`` depends only on (seed, i, j) like every other backend's,
and evaluation rows come from a fixed key that no training seed uses. Imports only leaves.
"""
from __future__ import annotations

import functools

import numpy as np

from lm.data import batches
from lm.data import vocab as vocab_lib
from lm.data import windows as windows_lib
from lm.data.config import DataConfig
from lm.data.windows import Batch

_EVAL_KEY = 0x5EED_E7A1  # hash key of the synthetic evaluation batches (never a training seed)


def _rows(cfg: DataConfig, key: int, rows_n: np.ndarray) -> Batch:
    length = cfg.seq_len + 1
    cells_nl = rows_n[:, None] * length + np.arange(length)
    high = cfg.synthetic_vocab_size - vocab_lib.NUM_RESERVED
    tokens_nl = vocab_lib.NUM_RESERVED + windows_lib.hashed_ints(key, cells_nl, high)
    return windows_lib.windows_to_batch(tokens_nl.astype(np.int32))


def train_iterator(cfg: DataConfig, seed: int, process_index: int = 0,
                   process_count: int = 1) -> batches.BatchIterator:
    """Infinite batches of random tokens: this host's rows of each."""
    row_fn = functools.partial(_rows, cfg, seed)
    return batches.train_iterator(cfg, row_fn, seed, process_index, process_count)


def eval_batches(cfg: DataConfig, process_index: int = 0, process_count: int = 1) -> list[Batch]:
    """Fixed random evaluation batches (this host's rows of each)."""
    row_fn = functools.partial(_rows, cfg, _EVAL_KEY)
    return batches.eval_batches(cfg, row_fn, process_index, process_count)
