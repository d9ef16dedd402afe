"""Observability: metrics.jsonl + TensorBoard events in the workdir, and the FLOP model for MFU."""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

import numpy as np

from lm.fileio import append_text
from lm.models.config import ModelConfig


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


class MetricsWriter:
    """Appends one JSON object per call to ``metrics.jsonl`` and mirrors scalars to TensorBoard."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if enabled:
            os.makedirs(workdir, exist_ok=True)
            try:
                from tensorboardX import SummaryWriter
                self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
            except ImportError:  # TensorBoard is optional; metrics.jsonl is the record
                self._tb = None

    def write(self, step: int, scalars: Mapping[str, Any]) -> dict:
        row = {"step": int(step), **{k: _scalar(v) for k, v in scalars.items()}}
        if self.enabled:
            append_text(self.path, json.dumps(row) + "\n")
            if self._tb is not None:
                for key, value in row.items():
                    if key != "step":
                        self._tb.add_scalar(key, value, step)
        return row

    def write_text(self, step: int, tag: str, text: str) -> None:
        if self.enabled and self._tb is not None:
            self._tb.add_text(tag, text, step)

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
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
