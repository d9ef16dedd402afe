"""Logical axis names -> mesh axes, in one place.

Layers name the axes of their parameters and key activations (``'embed'``, ``'mlp'``,
``'activation_batch'``, ...). A rules table, a list of ``(logical name, mesh axes)`` pairs, maps
them onto the named device mesh; changing the parallelism layout swaps the table, never a model
file. The tables live in ``lm/parallel/rules.py``. The trainer installs ``(mesh, rules)`` with
:func:`axis_rules` while it traces the step, and
:func:`constrain` turns an activation's logical names into a sharding constraint (a no-op when no
mesh is installed, so models also run eagerly on one device).
"""
from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Iterator, Optional, Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lm.parallel.rules import STANDARD as STANDARD_RULES, Rules  # noqa: E402  (re-exported)

_CONTEXT: contextvars.ContextVar[Optional[tuple[Mesh, Rules]]] = contextvars.ContextVar(
    "lm_axis_rules", default=None)


@contextlib.contextmanager
def axis_rules(mesh: Mesh, rules: Rules = STANDARD_RULES) -> Iterator[None]:
    """Installs (mesh, rules) for :func:`constrain` while tracing model code."""
    token = _CONTEXT.set((mesh, tuple(rules)))
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def logical_to_spec(names: Sequence[Optional[str]], rules: Rules = STANDARD_RULES,
                    mesh: Optional[Mesh] = None,
                    shape: Optional[Sequence[int]] = None) -> PartitionSpec:
    """Maps logical axis names to a PartitionSpec; a mesh axis is used at most once per array.

    Mesh axes of size 1 (or absent from ``mesh``) are dropped, so specs stay minimal. Given the
    array's ``shape``, a mesh axis that does not divide its dimension is dropped too (e.g. a
    65-character vocabulary stays replicated under tensor=2 instead of failing).
    """
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for name in names:
        if name is not None and name not in table:
            raise KeyError(f"logical axis {name!r} has no rule; add it to the rules table "
                           f"(known: {', '.join(sorted(table))})")
        axes = table.get(name) if name is not None else None
        axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
        kept = tuple(a for a in axes if a not in used
                     and (mesh is None or mesh.shape.get(a, 1) > 1))
        if shape is not None and mesh is not None:
            kept = _dividing_prefix(kept, shape[len(spec)], mesh)
        used.update(kept)
        spec.append(None if not kept else kept[0] if len(kept) == 1 else kept)
    return PartitionSpec(*spec)


def _dividing_prefix(axes: tuple[str, ...], dim: int, mesh: Mesh) -> tuple[str, ...]:
    """The longest prefix of ``axes`` whose mesh sizes multiply to a divisor of ``dim``."""
    size, kept = 1, []
    for axis in axes:
        size *= mesh.shape[axis]
        if dim % size:
            break
        kept.append(axis)
    return tuple(kept)


def constrain(x: jax.Array, names: Sequence[Optional[str]]) -> jax.Array:
    """Sharding constraint on an activation by logical names (no-op without installed rules)."""
    ctx = _CONTEXT.get()
    if ctx is None:
        return x
    mesh, rules = ctx
    if mesh.size == 1:
        return x
    if len(names) != x.ndim:
        raise ValueError(f"{len(names)} axis names {tuple(names)} for an array of shape {x.shape}")
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, logical_to_spec(names, rules, mesh, x.shape)))


def traced_on_mesh(mesh: Optional[Mesh], rules: Optional[Rules], fn):
    """``fn()`` traced under (mesh, rules), its outputs replicated so that every process can
    read them on the host (decoded tokens, scores: small); plain ``fn()`` without a mesh."""
    if mesh is None:
        return fn()
    with axis_rules(mesh, rules):
        replicated = NamedSharding(mesh, PartitionSpec())
        return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, replicated), fn())


def outputs_to_host(outputs):
    """The small outputs of a computation run by ``traced_on_mesh`` (decoded tokens, logits,
    scores), replicated there, read on this host. Parameters never go through here: they stay
    sharded on the mesh."""
    return jax.device_get(outputs)


def mesh_ways(mesh: Mesh, axes) -> int:
    """How many devices the mesh axes ``axes`` (a name, a tuple of names, or None) span."""
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    return math.prod(mesh.shape[a] for a in axes)
