"""Mesh presets: ``config.mesh`` sections. -1 fills the remaining devices.

Every preset carries every field of ``lm.parallel.MeshConfig`` so that any axis can be set from
the command line (``--config.mesh.sequence=2``).
"""
from __future__ import annotations

import ml_collections

from lm.parallel.mesh import MeshConfig


def mesh(**fields) -> ml_collections.ConfigDict:
    return MeshConfig.defaults(**fields)


def data_parallel():
    """Every device holds all parameters and a slice of the batch."""
    return mesh(data=-1)


def fsdp():
    """ZeRO-3: parameters, gradients and optimizer state sharded over all devices."""
    return mesh(data=1, fsdp=-1, rules="fsdp")


def zero1():
    """ZeRO-1: parameters replicated, optimizer state sharded over all devices."""
    return mesh(data=1, fsdp=-1, rules="zero1")


def megatron(tensor=8):
    """Megatron tensor parallelism with sequence-parallel activations, data parallel outside."""
    return mesh(data=-1, tensor=tensor, rules="megatron_sp")


def palm_2d(tensor=12):
    """PaLM's per-pod layout: 12-way model (tensor) parallel x FSDP over the rest."""
    return mesh(data=1, fsdp=-1, tensor=tensor, rules="palm_2d")
