"""Mesh presets: ``config.mesh`` sections. -1 fills the remaining devices."""
from __future__ import annotations

import ml_collections


def mesh(data=-1, fsdp=1, tensor=1) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"data": data, "fsdp": fsdp, "tensor": tensor})


def data_parallel():
    """Every device holds all parameters and a slice of the batch."""
    return mesh(data=-1)


def fsdp():
    """ZeRO-3: parameters, gradients and optimizer state sharded over all devices."""
    return mesh(data=1, fsdp=-1)


def palm_2d(tensor=12):
    """PaLM's per-pod layout: 12-way model (tensor) parallel x FSDP over the rest."""
    return mesh(data=1, fsdp=-1, tensor=tensor)
