"""Named layouts: logical axis name -> mesh axes, for parameters, optimizer state and activations.

A layout is two tables: one for parameters and activations, one for the optimizer state (they
differ only for ZeRO-1, which shards the optimizer state but replicates parameters). Select one
with ``config.mesh.rules``. Mesh axes: data, fsdp, tensor, sequence, pipeline; a mesh axis that is
absent, of size 1, or does not divide a dimension is dropped for that array.

Logical names. Parameters: vocab, embed, mlp, heads, kv_heads, kv (per-head features), norm,
position, layers (stacked layers), stage (pipeline stages), circular_repeats. Activations:
activation_stage (the pipeline buffer),
activation_batch, activation_length (inside attention/MLP), activation_norm_length (the
residual stream between blocks), activation_embed, activation_heads, activation_kv_heads,
activation_kv, activation_mlp, activation_vocab.
"""
from __future__ import annotations

import dataclasses
from typing import Union

from lm.configlib import ConfigError

MeshAxes = Union[None, str, tuple[str, ...]]
Rules = tuple[tuple[str, MeshAxes], ...]

BATCH = ("data", "fsdp")

_ACTIVATIONS_TENSOR = (
    ("activation_batch", BATCH),
    ("activation_length", "sequence"),
    ("activation_norm_length", "sequence"),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv_heads", "tensor"),
    ("activation_kv", None),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
)
_PIPELINE_AXES = (("layers", None), ("stage", "pipeline"), ("activation_stage", "pipeline"),
                  ("circular_repeats", None),
                  ("position", None), ("norm", None), ("kv", None))


def _table(*rules) -> Rules:
    return tuple(rules)


# ZeRO-3 over fsdp x Megatron tensor parallelism over tensor: the default, and PaLM's 2-D layout.
STANDARD: Rules = _table(
    *_ACTIVATIONS_TENSOR, *_PIPELINE_AXES,
    ("vocab", "tensor"), ("embed", "fsdp"), ("mlp", "tensor"), ("heads", "tensor"),
    ("kv_heads", "tensor"))

# Every device holds every parameter; only the batch is split.
DATA_PARALLEL: Rules = _table(
    ("activation_batch", BATCH + ("tensor",)), ("activation_length", "sequence"),
    ("activation_norm_length", "sequence"), *_PIPELINE_AXES,
    *((name, None) for name in ("activation_embed", "activation_heads", "activation_kv_heads",
                                 "activation_kv", "activation_mlp", "activation_vocab", "vocab",
                                 "embed", "mlp", "heads", "kv_heads")))

# ZeRO-3: parameters, gradients and optimizer state sharded over fsdp (and data, if any).
FSDP: Rules = _table(
    ("activation_batch", BATCH), ("activation_length", "sequence"),
    ("activation_norm_length", "sequence"), *_PIPELINE_AXES, ("embed", "fsdp"),
    *((name, None) for name in ("activation_embed", "activation_heads", "activation_kv_heads",
                                 "activation_kv", "activation_mlp", "activation_vocab", "vocab",
                                 "mlp", "heads", "kv_heads")))

# Megatron tensor parallelism with sequence-parallel activations: between blocks the residual
# stream (norms, dropout, residual adds) is split along the sequence over the tensor axis, inside
# attention and MLP along heads / hidden units. Parameters are replicated over data.
MEGATRON_SP: Rules = _table(
    ("activation_batch", BATCH), ("activation_length", "sequence"),
    ("activation_norm_length", ("sequence", "tensor")), ("activation_embed", None),
    ("activation_heads", "tensor"), ("activation_kv_heads", "tensor"), ("activation_kv", None),
    ("activation_mlp", "tensor"), ("activation_vocab", "tensor"), *_PIPELINE_AXES,
    ("vocab", "tensor"), ("embed", None), ("mlp", "tensor"), ("heads", "tensor"),
    ("kv_heads", "tensor"))


@dataclasses.dataclass(frozen=True)
class Layout:
    params: Rules      # parameters (and gradients) and activations
    optimizer: Rules   # optimizer state


LAYOUTS = {
    "standard": Layout(STANDARD, STANDARD),
    "palm_2d": Layout(STANDARD, STANDARD),  # 12-way tensor x FSDP over the rest, as in PaLM
    "data_parallel": Layout(DATA_PARALLEL, DATA_PARALLEL),
    "fsdp": Layout(FSDP, FSDP),
    "zero1": Layout(DATA_PARALLEL, FSDP),  # parameters replicated, optimizer state sharded
    "megatron_sp": Layout(MEGATRON_SP, MEGATRON_SP),
}


def layout(name: str) -> Layout:
    if name not in LAYOUTS:
        raise ConfigError(f"config.mesh.rules={name!r} is not one of {', '.join(LAYOUTS)}")
    return LAYOUTS[name]
