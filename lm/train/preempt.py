"""Stopping cleanly when asked: SIGTERM (how SLURM and TPU pods preempt) and SIGINT (Ctrl-C)
finish the current step; the loop then saves a checkpoint and returns, and the launcher exits 0.
A second SIGINT stops at once (KeyboardInterrupt), for a run stuck somewhere else.

With several processes the signal reaches them at different steps, so they must agree on where to
stop: there JAX's preemption service (on by default in ``jax.distributed``) names a step that every
process reaches, and SIGTERM is left to it; SIGINT keeps its default there (an immediate
KeyboardInterrupt), since one process stopping alone would leave the others waiting.
"""
from __future__ import annotations

import signal
import threading

import jax


class StopRequests:
    """``with StopRequests() as stop: ... if stop.reached(step): save and return``."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.signal_name: str | None = None
        self._previous: dict = {}

    def __enter__(self) -> "StopRequests":
        if not self.enabled or threading.current_thread() is not threading.main_thread():
            return self
        for signum in (signal.SIGINT, signal.SIGTERM) if jax.process_count() == 1 else ():
            self._previous[signum] = signal.signal(signum, self._request)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _request(self, signum, frame) -> None:
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # asked twice: stop now
        self.signal_name = signal.Signals(signum).name

    def reached(self, step: int) -> bool:
        """Whether to stop after ``step``; on several processes, true at the same step on all."""
        if jax.process_count() > 1 and self.enabled:
            from jax.experimental import multihost_utils
            if multihost_utils.reached_preemption_sync_point(step):
                self.signal_name = self.signal_name or "SIGTERM"
                return True
            return False
        return self.signal_name is not None
