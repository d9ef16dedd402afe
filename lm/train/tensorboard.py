"""TensorBoard event files written in the caller's thread.

tensorboardX's SummaryWriter writes from a background thread through a bounded queue. On a full
disk that thread dies, the queue fills, and the next metric (or closing the writer) blocks the run
forever. Writing each event synchronously costs nothing at the rate metrics are logged, and a
failed write is an OSError where it happened, which the launcher reports in one line.
"""
from __future__ import annotations

import math
import os
import time


class EventFile:
    def __init__(self, logdir: str):
        from tensorboardX.event_file_writer import EventsWriter
        os.makedirs(logdir, exist_ok=True)
        self._writer = EventsWriter(os.path.join(logdir, "events"))

    def scalar(self, tag: str, value: float, step: int) -> None:
        """A non-finite value is left out (metrics.jsonl records it as null)."""
        if math.isfinite(value):
            from tensorboardX import summary
            self._write(summary.scalar(tag, value), step)

    def text(self, tag: str, text: str, step: int) -> None:
        from tensorboardX import summary
        self._write(summary.text(tag, text), step)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()

    def _write(self, summary, step: int) -> None:
        from tensorboardX.proto import event_pb2
        self._writer.write_event(event_pb2.Event(summary=summary, wall_time=time.time(), step=step))
