"""Multi-host start-up: ``jax.distributed.initialize`` from flags or the environment.

Every process runs the same program; each sees its local devices, loads only its own rows of
each batch (``process_index`` / ``process_count`` in the data pipeline), and the global arrays
span all processes. On CPU the collectives go through gloo, so two processes on one machine
form a real two-host run.
"""
from __future__ import annotations

import os
from typing import Optional

import jax

# Environment variables read when no flag is given (the names SLURM-style launchers set too).
ENV_COORDINATOR = "LM_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "LM_NUM_PROCESSES"
ENV_PROCESS_ID = "LM_PROCESS_ID"


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None) -> bool:
    """Joins the multi-process job if one is described; returns whether it did.

    Without flags or environment variables this is a single-process run and nothing happens.
    On TPU pods and under SLURM, ``jax.distributed.initialize()`` also discovers everything by
    itself: set ``LM_COORDINATOR_ADDRESS=auto`` to ask for that.
    """
    coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR)
    if not coordinator_address:
        return False
    if num_processes is None and ENV_NUM_PROCESSES in os.environ:
        num_processes = int(os.environ[ENV_NUM_PROCESSES])
    if process_id is None and ENV_PROCESS_ID in os.environ:
        process_id = int(os.environ[ENV_PROCESS_ID])
    if coordinator_address == "auto":
        jax.distributed.initialize()
        return True
    if num_processes is None or process_id is None:
        raise ValueError(f"multi-process run at {coordinator_address}: also give the number of "
                         f"processes and this process's id (--num_processes/--process_id or "
                         f"{ENV_NUM_PROCESSES}/{ENV_PROCESS_ID})")
    if jax.config.jax_platforms in (None, "", "cpu") or os.environ.get("JAX_PLATFORMS") == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
    return True
