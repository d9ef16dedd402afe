"""The named device mesh. Its shape is a config value: ``config.mesh.<axis>``, -1 fills the rest.

Axes, outermost first: pipeline, data, fsdp, sequence, tensor. Tensor is innermost because its
collectives are the most frequent (every layer), so its devices should be the closest ones.
Each axis has an ICI size (within a slice / host) and a DCN size (across slices / hosts);
with any DCN size above 1 the mesh comes from ``mesh_utils.create_hybrid_device_mesh``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from lm.configlib import ConfigError, Section, at_least, one_of, option, rule
from lm.parallel.rules import LAYOUTS

AXES = ("pipeline", "data", "fsdp", "sequence", "tensor")


def _axis(doc: str, default: int = 1):
    return option(default, doc, rule(lambda v: v == -1 or v >= 1, "must be a positive size or -1 "
                               "(fill the remaining devices)", 0))


def _dcn_axis():
    return option(1, "the same axis across slices / hosts (multiplies the ICI size)", at_least(1))


@dataclasses.dataclass(frozen=True)
class MeshConfig(Section):
    where = "config.mesh"
    data: int = _axis("pure data parallelism (replicated parameters)", default=-1)
    fsdp: int = _axis("fully sharded data parallelism: batch and parameters both sharded")
    tensor: int = _axis("Megatron-style tensor parallelism over heads / mlp / vocab")
    sequence: int = _axis("context parallelism: activations split along the sequence")
    pipeline: int = _axis("pipeline stages (layers split across devices)")
    dcn_data: int = _dcn_axis()
    dcn_fsdp: int = _dcn_axis()
    dcn_tensor: int = _dcn_axis()
    dcn_sequence: int = _dcn_axis()
    dcn_pipeline: int = _dcn_axis()
    rules: str = option("standard", "layout preset (lm/parallel/rules.py)", one_of(*LAYOUTS))

    def check(self) -> None:
        fill = [f"config.mesh.{axis}" for axis in AXES if getattr(self, axis) == -1]
        if len(fill) > 1:
            raise ConfigError(f"only one mesh axis may be -1 (fill), got {', '.join(fill)}; give "
                              f"the others a size")

    def dcn_shape(self) -> dict[str, int]:
        return {axis: getattr(self, f"dcn_{axis}") for axis in AXES}

    def resolve(self, num_devices: int) -> dict[str, int]:
        """ICI axis sizes with a -1 filled in; errors name the field and the fix."""
        dcn = math.prod(self.dcn_shape().values())
        if num_devices % dcn:
            raise ConfigError(f"config.mesh.dcn_* multiply to {dcn}, which does not divide the "
                              f"{num_devices} available devices")
        per_slice = num_devices // dcn
        sizes = {axis: getattr(self, axis) for axis in AXES}
        fill = [axis for axis, size in sizes.items() if size == -1]
        fixed = math.prod(size for size in sizes.values() if size != -1)
        where = f"{per_slice} devices per slice" if dcn > 1 else f"{num_devices} available devices"
        if fill:
            if per_slice % fixed:
                raise ConfigError(
                    f"config.mesh: the fixed axes ({self._describe(sizes)}) multiply to {fixed}, "
                    f"which does not divide the {where}")
            sizes[fill[0]] = per_slice // fixed
        elif fixed != per_slice:
            raise ConfigError(
                f"config.mesh ({self._describe(sizes)}) has {fixed} devices but {per_slice} are "
                f"available; make the product equal {per_slice} or set one axis to -1")
        return sizes

    @staticmethod
    def _describe(sizes) -> str:
        return ", ".join(f"{axis}={size}" for axis, size in sizes.items() if size != 1)


def make_mesh(cfg: MeshConfig, devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """A Mesh with axes (pipeline, data, fsdp, sequence, tensor) over ``devices`` (default: all)."""
    devices = list(jax.devices() if devices is None else devices)
    ici = cfg.resolve(len(devices))
    dcn = cfg.dcn_shape()
    ici_shape = tuple(ici[axis] for axis in AXES)
    dcn_shape = tuple(dcn[axis] for axis in AXES)
    from jax.experimental import mesh_utils
    if math.prod(dcn_shape) > 1:
        grid = mesh_utils.create_hybrid_device_mesh(
            ici_shape, dcn_shape, devices=devices,
            process_is_granule=devices[0].platform != "tpu")
    else:
        try:
            grid = mesh_utils.create_device_mesh(ici_shape, devices=devices)
        except (ValueError, NotImplementedError, AssertionError):
            grid = np.asarray(devices).reshape(ici_shape)
    return Mesh(grid, AXES)
