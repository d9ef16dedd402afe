"""Host batches -> global jax.Arrays sharded over the batch axes, and a prefetching wrapper."""
from __future__ import annotations

import queue
import threading
from typing import Mapping

import jax
import numpy as np
from jax.sharding import NamedSharding


def to_global(batch: Mapping[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """This host's rows of every field -> one global array per field (no cross-host copy)."""
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in batch.items()}


class Prefetcher:
    """Produces the next ``depth`` host batches on a background thread while the step runs.

    The checkpointed position stays exact: each batch travels with the iterator state right
    after it was produced, and ``get_state`` returns the state after the last batch *consumed*,
    so a resumed run continues with the first batch this run had not yet trained on.
    """

    def __init__(self, iterator, depth: int = 2):
        self._iterator, self._depth = iterator, depth
        self._state = iterator.get_state()
        self._start()

    def _start(self) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=self._depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        try:
            while not self._stop.is_set():
                batch = next(self._iterator)
                self._put((batch, self._iterator.get_state(), None))
        except BaseException as error:  # handed to the consumer, never swallowed
            self._put((None, None, error))

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self) -> "Prefetcher":
        return self

    def __next__(self):
        batch, state, error = self._queue.get()
        if error is not None:
            raise error
        self._state = state
        return batch

    def get_state(self) -> dict:
        return self._state

    def set_state(self, state: dict) -> None:
        self.close()
        self._iterator.set_state(state)
        self._state = self._iterator.get_state()
        self._start()

    def close(self) -> None:
        """Stops the producer thread (the queued batches are dropped)."""
        self._stop.set()
        self._thread.join()
