"""Instances -> training rows whose loss falls only on response tokens and their EOS.

An instance of n tokens ``t`` with per-token weights ``w`` (1 on response tokens and on the EOS
after each response, 0 on prompt tokens) becomes ``inputs = t[:-1]``, ``targets = t[1:]``,
``weights = w[1:]``: next-token prediction where only the response tokens (and the EOS that
ends each one) count, the row convention of ``lm.data.pipeline.windows_to_batch``. So an
instance fits a row of ``seq_len`` when n <= seq_len + 1. Rows are padded with PAD = 0 and
weight 0; padding is never EOS, so the EOS of a padded row keeps its weight.

Segments are encoded one by one (neighbouring prompt pieces are merged first), as seqio encodes
'inputs' and 'targets' separately: the prompt / response boundary is always a token boundary.

With ``pack=True`` several instances share a row, placed as ``lm.data.pipeline.pack_examples``
places documents (greedily, in order, never split), with 'positions' restarting at 0 and
'segment_ids' 1, 2, ... per instance (0 on padding), so attention stays inside an instance.

Nothing is dropped silently: instances that do not fit, hold characters the vocabulary lacks
(they would become UNK) or have no response are counted in ``RowReport`` by reason, or raise
when the caller asks for errors.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Iterable, Optional, Sequence

import numpy as np

from lm.data import pipeline
from lm.data import vocab as vocab_lib
from lm.instruct.instances import Instance

Arrays = dict[str, np.ndarray]
OVERFLOW_CHOICES = ("skip", "error")


class UnrepresentableTextError(ValueError):
    """Text holds characters the vocabulary encodes as UNK."""


@dataclasses.dataclass
class RowReport:
    instances: int = 0  # given
    kept: int = 0  # in the rows
    rows: int = 0
    tokens: int = 0  # real (non-padding) target positions of the kept instances
    response_tokens: int = 0  # positions with weight 1: response tokens plus one EOS per response
    skipped_too_long: int = 0
    skipped_unrepresentable: int = 0
    skipped_no_response: int = 0
    skip_reasons: dict[int, str] = dataclasses.field(default_factory=dict)  # instance index -> why

    @property
    def skipped(self) -> int:
        return self.skipped_too_long + self.skipped_unrepresentable + self.skipped_no_response

    def __str__(self) -> str:  # logs read the counts, not every skip reason
        return self.summary()

    def summary(self) -> str:
        return (f"{self.kept}/{self.instances} instances in {self.rows} rows, "
                f"{self.response_tokens} trained tokens of {self.tokens}; skipped "
                f"{self.skipped_too_long} too long, {self.skipped_unrepresentable} with "
                f"unrepresentable characters, {self.skipped_no_response} without a response")


# ----------------------------------------------------------------------------- encoding

def unrepresentable_characters(text: str, vocab) -> list[str]:
    """The distinct characters of ``text`` that ``vocab`` turns into UNK, in sorted order."""
    if vocab_lib.UNK_ID not in vocab.encode(text):
        return []
    return [c for c in sorted(set(text)) if vocab_lib.UNK_ID in vocab.encode(c)]


def check_representable(text: str, vocab, what: str = "text") -> None:
    """Raises ``UnrepresentableTextError`` naming the characters ``vocab`` lacks."""
    missing = unrepresentable_characters(text, vocab)
    if missing:
        raise UnrepresentableTextError(
            f"{what} has characters the vocabulary lacks (they would become UNK): "
            f"{''.join(missing)!r} ({', '.join(f'U+{ord(c):04X}' for c in missing)}) in "
            f"{_excerpt(text, missing[0])!r}")


def _excerpt(text: str, char: str, width: int = 30) -> str:
    at = text.index(char)
    return text[max(0, at - width):at + width]


def encode_instance(instance: Instance, vocab) -> tuple[list[int], list[int]]:
    """(tokens, weights) of an instance: weight 1 exactly on response tokens and on the EOS
    after each response, 0 on prompt tokens. Raises ``UnrepresentableTextError``."""
    tokens: list[int] = []
    weights: list[int] = []
    for number, (text, is_response) in enumerate(instance.segments):
        kind = "response" if is_response else "prompt"
        check_representable(text, vocab, f"{kind} segment {number}")
        ids = vocab.encode(text)
        if is_response:
            ids = ids + [vocab_lib.EOS_ID]
        tokens += ids
        weights += [int(is_response)] * len(ids)
    return tokens, weights


# ----------------------------------------------------------------------------- rows

def instruction_rows(instances: Sequence[Instance], vocab, seq_len: int, pack: bool = False,
                     on_overflow: str = "skip",
                     on_unrepresentable: str = "error") -> tuple[Arrays, RowReport]:
    """Rows [N, seq_len] of 'inputs', 'targets', 'weights', 'positions' (+ 'segment_ids' when
    ``pack``) for training 'inputs' -> 'targets' with loss on the responses only.

    ``on_overflow`` / ``on_unrepresentable``: 'skip' counts the instance in the report, 'error'
    raises naming the instance index.
    """
    _check_choice("on_overflow", on_overflow)
    _check_choice("on_unrepresentable", on_unrepresentable)
    if isinstance(seq_len, bool) or not isinstance(seq_len, (int, np.integer)) or seq_len < 1:
        raise ValueError(f"seq_len={seq_len!r} must be a positive integer")
    report = RowReport(instances=len(instances))
    encoded = [encode_or_skip(i, instance, vocab, seq_len, on_overflow, on_unrepresentable, report)
               for i, instance in enumerate(instances)]
    examples = [e for e in encoded if e is not None]
    report.kept = len(examples)
    arrays = _rows(examples, seq_len, pack)
    report.rows = len(arrays["inputs"])
    report.tokens = sum(len(tokens) - 1 for tokens, _ in examples)
    report.response_tokens = int(arrays["weights"].sum())
    return arrays, report


def _check_choice(name: str, value: str) -> None:
    if value not in OVERFLOW_CHOICES:
        raise ValueError(f"{name}={value!r} must be one of {', '.join(map(repr, OVERFLOW_CHOICES))}")


def encode_or_skip(index, instance, vocab, seq_len, on_overflow, on_unrepresentable,
                   report, name: str = "") -> Optional[tuple[np.ndarray, np.ndarray]]:
    """(tokens, weights) as arrays, or None after counting in ``report`` (a RowReport, or any
    report with its skip counts) why the instance is skipped; ``name`` names it in messages
    (default 'instance <index>')."""
    name = name or f"instance {index}"
    try:
        tokens, weights = encode_instance(instance, vocab)
    except UnrepresentableTextError as e:
        if on_unrepresentable == "error":
            raise UnrepresentableTextError(f"{name}: {e}") from None
        report.skipped_unrepresentable += 1
        report.skip_reasons[index] = f"{name} unrepresentable: {e}"
        return None
    if len(tokens) > seq_len + 1:
        message = (f"{name} has {len(tokens)} tokens, more than seq_len + 1 = "
                   f"{seq_len + 1} (seq_len={seq_len})")
        if on_overflow == "error":
            raise ValueError(message + "; raise seq_len or pass on_overflow='skip'")
        report.skipped_too_long += 1
        report.skip_reasons[index] = message
        return None
    if not any(weights):
        report.skipped_no_response += 1
        report.skip_reasons[index] = f"{name} has no response to train on"
        return None
    return np.asarray(tokens, np.int32), np.asarray(weights, np.float32)


def _rows(examples: list[tuple[np.ndarray, np.ndarray]], seq_len: int, pack: bool) -> Arrays:
    """Lays out each instance's shifted (inputs, targets, weights) into rows.

    Every instance contributes n - 1 positions; a flat index (+1, 0 = padding) per row cell is
    placed by ``pipeline.pack_examples`` when packing, one instance per row otherwise.
    """
    lengths = [len(tokens) - 1 for tokens, _ in examples]
    starts = np.cumsum([0] + lengths)[:-1]
    pieces = [np.arange(s, s + n, dtype=np.int32) + 1 for s, n in zip(starts, lengths)]
    if pack and pieces:
        cells_rt, positions_rt = pipeline.pack_examples(pieces, seq_len)
    else:
        cells_rt = np.zeros((len(pieces), seq_len), np.int32)
        for row, piece in enumerate(pieces):
            cells_rt[row, :len(piece)] = piece
        positions_rt = np.where(cells_rt > 0, np.arange(seq_len, dtype=np.int32), 0)
    flat = {
        "inputs": (_flat(t[:-1] for t, _ in examples), np.int32),
        "targets": (_flat(t[1:] for t, _ in examples), np.int32),
        "weights": (_flat(w[1:] for _, w in examples), np.float32),
    }
    arrays = {key: np.concatenate([[0], values]).astype(dtype)[cells_rt]
              for key, (values, dtype) in flat.items()}
    arrays["positions"] = positions_rt.astype(np.int32)
    if pack:
        real_rt = cells_rt > 0
        arrays["segment_ids"] = (np.cumsum(positions_rt == 0, axis=1) * real_rt).astype(np.int32)
    return arrays


def _flat(pieces: Iterable[np.ndarray]) -> np.ndarray:
    pieces = list(pieces)
    return np.concatenate(pieces) if pieces else np.zeros(0, np.int32)


# ----------------------------------------------------------------------------- batches

def epoch_order(seed: int, epoch: int, num_rows: int) -> np.ndarray:
    """The row order of one epoch: a permutation fixed by (seed, epoch)."""
    return _cached_order(int(seed), int(epoch), int(num_rows))


@functools.lru_cache(maxsize=4)
def _cached_order(seed: int, epoch: int, num_rows: int) -> np.ndarray:
    order = np.random.default_rng([seed, epoch]).permutation(num_rows)
    order.setflags(write=False)
    return order


def batch_at(arrays: Arrays, batch_size: int, seed: int, step: int, process_index: int = 0,
             process_count: int = 1) -> Arrays:
    """This host's rows of global batch ``step``: rows ``step * B .. step * B + B - 1`` of the
    stream that visits every row once per epoch, each epoch in its own seeded order. Depends
    only on (arrays, B, seed, step), so a resumed run needs only the step."""
    num_rows = len(arrays["inputs"])
    if num_rows == 0:
        raise ValueError("no rows to batch: every instance was skipped (see the RowReport)")
    if batch_size % process_count:
        raise ValueError(f"batch_size={batch_size} does not split across {process_count} processes")
    per_host = batch_size // process_count
    stream_n = step * batch_size + process_index * per_host + np.arange(per_host)
    epochs_n, offsets_n = np.divmod(stream_n, num_rows)
    picked_n = np.array([epoch_order(seed, e, num_rows)[o] for e, o in zip(epochs_n, offsets_n)],
                        dtype=np.int64)
    return {key: values[picked_n] for key, values in arrays.items()}


def epoch_at(num_rows: int, batch_size: int, step: int) -> float:
    """Epochs completed after ``step`` batches (fractional)."""
    return step * batch_size / num_rows


def batches(arrays: Arrays, batch_size: int, seed: int, process_index: int = 0,
            process_count: int = 1) -> pipeline.BatchIterator:
    """Infinite training batches over the rows, epoch after epoch, resumable by step: the
    ``lm.data.pipeline.BatchIterator`` interface (``get_state`` / ``set_state``, and
    ``batch_index`` is the next step)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer")
    return pipeline.BatchIterator(
        lambda step: batch_at(arrays, batch_size, seed, step, process_index, process_count), seed)
