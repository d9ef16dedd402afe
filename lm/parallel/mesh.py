"""The named device mesh. Its shape is a config value: ``config.mesh.<axis>``, -1 fills the rest."""
from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from lm.configlib import ConfigError, from_section

AXES = ("data", "fsdp", "tensor")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    data: int = -1     # pure data parallelism (replicated parameters)
    fsdp: int = 1      # fully sharded data parallelism: batch and parameters both sharded
    tensor: int = 1    # Megatron-style tensor parallelism over heads / mlp / vocab

    @classmethod
    def from_config(cls, section) -> "MeshConfig":
        return from_section(cls, section, "config.mesh")

    def resolve(self, num_devices: int) -> dict[str, int]:
        """Axis sizes with a -1 filled in; errors name the field and the fix."""
        sizes = {axis: getattr(self, axis) for axis in AXES}
        for axis, size in sizes.items():
            if size == 0 or size < -1:
                raise ConfigError(f"config.mesh.{axis}={size}: use a positive size or -1 (fill)")
        fill = [axis for axis, size in sizes.items() if size == -1]
        if len(fill) > 1:
            raise ConfigError(f"config.mesh: only one axis may be -1, got {', '.join(fill)}")
        fixed = math.prod(size for size in sizes.values() if size != -1)
        if fill:
            if num_devices % fixed:
                raise ConfigError(
                    f"config.mesh: the fixed axes ({self._describe(sizes)}) multiply to {fixed}, "
                    f"which does not divide the {num_devices} available devices")
            sizes[fill[0]] = num_devices // fixed
        elif fixed != num_devices:
            raise ConfigError(
                f"config.mesh ({self._describe(sizes)}) has {fixed} devices but {num_devices} are "
                f"available; make the product equal {num_devices} or set one axis to -1")
        return sizes

    @staticmethod
    def _describe(sizes) -> str:
        return ", ".join(f"{axis}={size}" for axis, size in sizes.items())


def make_mesh(cfg: MeshConfig, devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """A Mesh with axes (data, fsdp, tensor) over ``devices`` (default: all)."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = cfg.resolve(len(devices))
    shape = tuple(sizes[axis] for axis in AXES)
    try:
        from jax.experimental import mesh_utils
        grid = mesh_utils.create_device_mesh(shape, devices=devices)
    except (ValueError, NotImplementedError, AssertionError):
        grid = np.asarray(devices).reshape(shape)
    return Mesh(grid, AXES)


def batch_axes_size(mesh: Mesh) -> int:
    """How many ways the global batch is split (data x fsdp)."""
    return mesh.shape["data"] * mesh.shape["fsdp"]
