"""Shardings for parameter trees and batches, from the logical names the model declares."""
from __future__ import annotations

from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lm.parallel.axes import STANDARD_RULES, Rules, logical_to_spec


def _is_spec(x) -> bool:
    return isinstance(x, PartitionSpec)


def logical_specs(state: nnx.State) -> dict:
    """Pure dict (same structure as ``state.to_pure_dict()``) of logical PartitionSpecs."""
    return nnx.get_partition_spec(state).to_pure_dict()


def param_shardings(state: nnx.State, mesh: Mesh, rules: Rules = STANDARD_RULES) -> dict:
    """NamedSharding per parameter, resolved through the rules table."""
    def sharding(spec, leaf):
        return NamedSharding(mesh, logical_to_spec(tuple(spec), rules, mesh, leaf.shape))
    return jax.tree.map(sharding, logical_specs(state), state.to_pure_dict(), is_leaf=_is_spec)


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
