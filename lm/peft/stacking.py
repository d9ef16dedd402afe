"""New parameters next to existing ones that may be stacked over layers.

A block's parameters carry leading axes when the layers are stacked: [L, ...] ('layers') with
``scan_layers``, [S, Lp, ...] or [R, S, Lp, ...] in a pipeline. A fine-tuning parameter attached
to such a block after it was built needs the same leading shape and axis names, read here from a
parameter of the block, so that the scan or the pipeline slices it with the rest.
"""
from __future__ import annotations

from typing import Optional, Sequence

from flax import nnx

from lm.models.layers import param

Lead = tuple[tuple[int, ...], tuple[Optional[str], ...]]
NO_LEAD: Lead = ((), ())


def leading_axes(variable: nnx.Variable, own_ndim: int) -> Lead:
    """The shape and axis names before the last ``own_ndim`` axes of ``variable``."""
    lead = len(variable.shape) - own_ndim
    names = tuple(variable.get_metadata()["out_sharding"])
    return tuple(variable.shape[:lead]), names[:lead]


def own_axis_names(variable: nnx.Variable, own_ndim: int) -> tuple[Optional[str], ...]:
    """The axis names of the last ``own_ndim`` axes of ``variable``."""
    names = tuple(variable.get_metadata()["out_sharding"])
    return names[len(names) - own_ndim:]


def stacked_param(rngs: nnx.Rngs, init, lead: Lead, shape: Sequence[int],
                  axes: Sequence[Optional[str]], dtype) -> nnx.Param:
    """A parameter of ``shape`` per layer, stacked like ``lead`` (independent draws per layer)."""
    lead_shape, lead_names = lead
    return param(rngs, init, (*lead_shape, *shape), (*lead_names, *axes), dtype)
