"""Rollouts: responses sampled from a policy with the cached decoder on the mesh, laid out as
training rows, and log-probabilities computed with exactly the processing that sampled them.

A rollout row is the prompt followed by the response, and the EOS when the response ended with
one: ``inputs = tokens[:-1]``, ``targets = tokens[1:]``, weight 1 on the response's targets (and
its EOS), 0 on the prompt and the padding, the convention of instruction rows. The log-probs of
the clipped objectives come from ``filter_logits`` (temperature, top-k and top-p masks) as the
sampler's did: scoring the tokens under other processing than the one that drew them makes the
probability ratios wrong from the first step (TRL #1005, #1857).
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lm.align.config import AlignConfig
from lm.infer.decode import DecodeSettings, generate
from lm.infer.sample import filter_logits


def sampling_settings(align: AlignConfig, eos_id: int, seed: int, temperature=None) -> DecodeSettings:
    """``config.align``'s rollout sampling; ``temperature`` 0 for greedy answers."""
    t = align.temperature if temperature is None else temperature
    return DecodeSettings(max_new_tokens=align.max_new_tokens, temperature=t,
                          top_k=align.top_k if t else 0, top_p=align.top_p if t else 1.0,
                          stop_tokens=(eos_id,), seed=seed)


def sample(run, params, prompts: Sequence[Sequence[int]], settings: DecodeSettings) -> list[list[int]]:
    """New tokens for each prompt, cut before the EOS, decoded on ``run``'s mesh."""
    return generate(run.graphdef, params, [list(p) for p in prompts], settings,
                    mesh=run.mesh, rules=run.rules).tokens


def rollout_rows(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]],
                 max_new_tokens: int, seq_len: int, eos_id: int,
                 always_eos: bool = False) -> dict[str, np.ndarray]:
    """[B, seq_len] rows of prompt + response (+ EOS when the response stopped before
    ``max_new_tokens``, or always with ``always_eos``: a reward model reads its score where the
    EOS is predicted, after the whole response), weighted on the response."""
    batch = len(prompts)
    arrays = {"inputs": np.zeros((batch, seq_len), np.int32),
              "targets": np.zeros((batch, seq_len), np.int32),
              "weights": np.zeros((batch, seq_len), np.float32),
              "positions": np.broadcast_to(np.arange(seq_len, dtype=np.int32), (batch, seq_len)).copy()}
    for row, (prompt, response) in enumerate(zip(prompts, responses)):
        ended = always_eos or len(response) < max_new_tokens
        tokens = list(prompt) + list(response) + ([eos_id] if ended else [])
        if len(tokens) - 1 > seq_len:
            raise ValueError(f"a prompt of {len(prompt)} tokens and {max_new_tokens} new tokens do "
                             f"not fit config.data.seq_len={seq_len}; raise it to at least "
                             f"{len(prompt) + max_new_tokens}")
        length = len(tokens) - 1
        arrays["inputs"][row, :length] = tokens[:-1]
        arrays["targets"][row, :length] = tokens[1:]
        arrays["weights"][row, len(prompt) - 1: length] = 1.0
    return arrays


def processed_token_logps(logits_btv: jax.Array, targets_bt: jax.Array, temperature: float,
                          top_k: int = 0, top_p: float = 1.0) -> jax.Array:
    """[B, T] log-probs of ``targets`` under the sampling distribution: logits / temperature with
    the top-k and top-p masks (a masked-out token gets -inf)."""
    batch, length, vocab = logits_btv.shape
    flat_nv = filter_logits(logits_btv.reshape(batch * length, vocab), temperature, top_k, top_p)
    logps_nv = jax.nn.log_softmax(flat_nv, axis=-1)
    picked_n = jnp.take_along_axis(logps_nv, targets_bt.reshape(-1, 1), axis=-1)[:, 0]
    return picked_n.reshape(batch, length)
