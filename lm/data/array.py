"""Backend 'array': one corpus tokenized into memory; NumPy only, no TensorFlow.

Training rows are nanoGPT windows at hashed offsets of the train split, or packed documents
with ``packing=True``; evaluation takes evenly spaced rows of the validation split (see
``lm.data.batches``). Imports only leaves: ``batches`` for the rows, ``tokens`` for the arrays.
"""
from __future__ import annotations

from lm.data import batches
from lm.data import tokens as tokens_lib
from lm.data.config import DataConfig
from lm.data.windows import Batch


def train_iterator(cfg: DataConfig, seed: int, process_index: int = 0,
                   process_count: int = 1) -> batches.BatchIterator:
    """Infinite training batches of ``cfg.corpus``: this host's rows of each."""
    row_fn = batches.train_rows(cfg, seed, tokens_lib.split_tokens, tokens_lib.packed_rows)
    return batches.train_iterator(cfg, row_fn, seed, process_index, process_count)


def eval_batches(cfg: DataConfig, process_index: int = 0, process_count: int = 1) -> list[Batch]:
    """The validation batches of ``cfg.corpus`` (this host's rows of each)."""
    row_fn = batches.eval_rows(cfg, tokens_lib.split_tokens, tokens_lib.packed_rows)
    return batches.eval_batches(cfg, row_fn, process_index, process_count)
