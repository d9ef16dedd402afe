"""Host batches -> global jax.Arrays sharded over the mesh's batch axes."""
from __future__ import annotations

from typing import Iterator, Mapping

import jax
import numpy as np
from jax.sharding import NamedSharding


def to_global(batch: Mapping[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """This host's rows of every field -> one global array per field (no cross-host copy)."""
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in batch.items()}


def global_batches(host_batches: Iterator[Mapping[str, np.ndarray]],
                   sharding: NamedSharding) -> Iterator[dict[str, jax.Array]]:
    for batch in host_batches:
        yield to_global(batch, sharding)
