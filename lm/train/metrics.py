"""Observability: metrics.jsonl + TensorBoard events in the workdir, and the FLOP model for MFU."""
from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Mapping

import numpy as np

from lm.fileio import append_text, write_atomically
from lm.models.config import ModelConfig
from lm.train.tensorboard import EventFile

log = logging.getLogger(__name__)


def flops_per_token(cfg: ModelConfig, num_params: int, position_params: int, seq_len: int) -> float:
    """PaLM appendix B: 6N + 12 L H Q T training FLOPs per token (matmuls only).

    N counts every parameter that takes part in a matmul: all but the learned position table
    (a lookup); a tied embedding counts once, for the output projection.
    An LSTM has no attention term; an encoder-decoder's cross-attention is counted like its
    self-attention (queries over one length of keys), in both stacks.
    """
    n = num_params - position_params
    if cfg.arch == "lstm":
        return 6.0 * n
    layers = cfg.num_layers + (cfg.encoder_layers if cfg.arch == "encoder_decoder" else 0)
    layers += cfg.num_layers if cfg.arch == "encoder_decoder" else 0  # cross-attention
    attention = 12 * layers * cfg.num_heads * cfg.dim_per_head * seq_len
    return 6.0 * n + attention


def _scalar(value: Any) -> float:
    return float(np.asarray(value))


def json_value(value: float):
    """Strict JSON has no NaN or Infinity: a non-finite value is written as null."""
    return value if math.isfinite(value) else None


class MetricsWriter:
    """Appends one JSON object per call to ``metrics.jsonl`` and mirrors scalars to TensorBoard.
    Values are strict JSON (a non-finite value is null); a torn last line left by a killed run is
    cut off before the first new row, so the file stays one object per line."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if enabled:
            os.makedirs(workdir, exist_ok=True)
            repair_torn_tail(self.path)
            try:
                self._tb = EventFile(os.path.join(workdir, "tensorboard"))
            except ImportError:  # TensorBoard is optional; metrics.jsonl is the record
                self._tb = None

    def write(self, step: int, scalars: Mapping[str, Any]) -> dict:
        row = {"step": int(step), **{k: _scalar(v) for k, v in scalars.items()}}
        if self.enabled:
            strict = {k: json_value(v) if isinstance(v, float) else v for k, v in row.items()}
            append_text(self.path, json.dumps(strict, allow_nan=False) + "\n")
            if self._tb is not None:
                for key, value in row.items():
                    if key != "step":
                        self._tb.scalar(key, value, step)
                self._tb.flush()
        return row

    def write_text(self, step: int, tag: str, text: str) -> None:
        if self.enabled and self._tb is not None:
            self._tb.text(tag, text, step)
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def last_logged(workdir: str) -> dict:
    """The last logged value of every metric (a finished run reports its figures again)."""
    logged: dict = {}
    for row in read_metrics(workdir):
        logged.update(row)
    return logged


def read_metrics(workdir: str) -> list[dict]:
    """Every row of ``metrics.jsonl``; a line that is not a JSON object (the torn end of a killed
    run's last write) is skipped with a warning. null reads as NaN."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            row = _parsed(line)
            if row is None and line.strip():
                log.warning("%s line %d is not a JSON object (a torn write?); skipped", path, number)
            elif row is not None:
                rows.append({k: math.nan if v is None else v for k, v in row.items()})
    return rows


def _parsed(line: str):
    try:
        row = json.loads(line)
    except ValueError:
        return None
    return row if isinstance(row, dict) else None


def repair_torn_tail(path: str) -> None:
    """Ends a last line that a killed run left without its newline: a whole row gets the newline,
    a torn one is removed, so that the next row does not join it. Earlier lines stay as they are."""
    if not os.path.exists(path):
        return
    with open(path, "rb") as f:
        data = f.read()
    if not data or data.endswith(b"\n"):
        return
    body, _, last = data.rpartition(b"\n")
    if _parsed(last.decode("utf-8", errors="replace")) is not None:
        write_atomically(path, data + b"\n")
        log.warning("%s: the last row lacked its newline (an interrupted run); added", path)
    else:
        write_atomically(path, body + b"\n" if body else b"")
        log.warning("%s: removed the torn last line an interrupted run left: %r", path, last[:80])
