"""Shardings for parameter trees and batches, from the logical names the model declares."""
from __future__ import annotations

import logging
from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lm.parallel.axes import STANDARD_RULES, Rules, logical_to_spec, mesh_ways

log = logging.getLogger("lm.parallel")


def _is_spec(x) -> bool:
    return isinstance(x, PartitionSpec)


def logical_specs(state: nnx.State) -> dict:
    """Pure dict (same structure as ``state.to_pure_dict()``) of logical PartitionSpecs."""
    return nnx.get_partition_spec(state).to_pure_dict()


def param_shardings(state: nnx.State, mesh: Mesh, rules: Rules = STANDARD_RULES) -> dict:
    """NamedSharding per parameter, resolved through the rules table.

    The one rule for a dimension that does not divide its mesh axes (for every logical axis:
    heads, kv_heads, mlp, vocab, embed, ...): the axis is replicated there, with a warning."""
    undivided: dict[tuple, int] = {}

    def sharding(spec, leaf):
        names = tuple(spec)
        for key in _undivided(names, leaf.shape, rules, mesh):
            undivided[key] = undivided.get(key, 0) + 1
        return NamedSharding(mesh, logical_to_spec(names, rules, mesh, leaf.shape))
    shardings = jax.tree.map(sharding, logical_specs(state), state.to_pure_dict(), is_leaf=_is_spec)
    for (name, dim, axes), count in sorted(undivided.items()):
        _warn_once(f"the logical axis {name!r} (size {dim}) does not divide over the mesh axes "
                   f"{axes} ({mesh_ways(mesh, axes)} ways): replicated there in {count} parameter(s) "
                   f"(each of those devices holds a whole copy)")
    return shardings


def _undivided(names, shape, rules: Rules, mesh: Mesh) -> list[tuple[str, int, tuple]]:
    """(logical name, dimension, mesh axes) where the rules shard a dimension that the mesh
    axes do not divide."""
    wanted = logical_to_spec(names, rules, mesh)
    kept = logical_to_spec(names, rules, mesh, shape)
    found = []
    for name, dim, want, got in zip(names, shape, wanted, kept):
        want = (want,) if isinstance(want, str) else tuple(want or ())
        got = (got,) if isinstance(got, str) else tuple(got or ())
        if want != got:
            found.append((name, dim, tuple(a for a in want if a not in got)))
    return found


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        log.warning(message)


def batch_sharding(mesh: Mesh, rules: Rules = STANDARD_RULES) -> NamedSharding:
    """[batch, length] arrays: batch split over the batch axes of the rules (data, fsdp)."""
    return NamedSharding(mesh, logical_to_spec(("activation_batch", "activation_length"), rules, mesh))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def like_params(tree: Any, params: Any, params_shardings: dict, mesh: Mesh) -> Any:
    """Shardings for an optimizer state: a leaf that mirrors a parameter follows its sharding.

    optax states hold copies of the parameter tree (Adam's mu and nu) next to scalars (counts) and
    factored statistics; a leaf whose key path ends with a parameter's path and whose shape equals
    that parameter's gets the parameter's sharding, everything else is replicated.
    """
    by_path = {}
    for (path, leaf), sharding in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                                      jax.tree.leaves(params_shardings)):
        by_path[tuple(path)] = (leaf.shape, sharding)

    def choose(path, leaf):
        path = tuple(path)
        for start in range(len(path)):
            match = by_path.get(path[start:])
            if match and match[0] == getattr(leaf, "shape", None):
                return match[1]
        return replicated(mesh)
    return jax.tree_util.tree_map_with_path(choose, tree)
