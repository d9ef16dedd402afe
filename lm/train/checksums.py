"""A CRC-32 and size per file of a finished checkpoint step, checked before it is restored.

Orbax's atomic rename protects against a crash mid-save, not against what happens to the files
afterwards (a truncated copy, a zeroed block, a flipped bit): those would load silently and
change the run. ``seal(step_dir)`` records every file; ``verify(step_dir)`` names the first one
that differs. A step without a record (the process died between the rename and the sealing) is
accepted unverified: the rename already proved that its write completed.
"""
from __future__ import annotations

import json
import logging
import os
import zlib
from typing import Optional

from lm.fileio import write_atomically

log = logging.getLogger(__name__)

RECORD = "checksums.json"
_CHUNK = 1 << 22


def seal(step_dir: str) -> None:
    """Writes ``<step_dir>/checksums.json``. A step that is not there (rotated out meanwhile, or
    never completed) is left alone."""
    if not os.path.isdir(step_dir):  # orbax renames a step into place only once it is complete
        return
    try:
        record = {path: _fingerprint(os.path.join(step_dir, path)) for path in _files(step_dir)}
    except FileNotFoundError:
        return
    write_atomically(os.path.join(step_dir, RECORD), json.dumps(record, indent=0, sort_keys=True))


def verify(step_dir: str) -> Optional[str]:
    """None when every recorded file is there with its size and CRC; else what is wrong."""
    record_path = os.path.join(step_dir, RECORD)
    if not os.path.exists(record_path):
        log.info("%s has no %s (written just before the run stopped); restoring it unverified",
                 step_dir, RECORD)
        return None
    try:
        with open(record_path) as f:
            record = json.load(f)
    except (OSError, ValueError) as e:
        return f"has an unreadable {RECORD} ({e})"
    for path, (size, crc) in sorted(record.items()):
        full = os.path.join(step_dir, path)
        if not os.path.exists(full):
            return f"is missing {path}"
        actual_size, actual_crc = _fingerprint(full)
        if actual_size != size:
            return f"has {path} of {actual_size} bytes, {size} when written"
        if actual_crc != crc:
            return f"has {path} changed since it was written (CRC-32 mismatch)"
    return None


def _files(step_dir: str) -> list[str]:
    paths = []
    for root, _, names in os.walk(step_dir):
        for name in names:
            path = os.path.relpath(os.path.join(root, name), step_dir)
            if path != RECORD:
                paths.append(path)
    return sorted(paths)


def _fingerprint(path: str) -> tuple[int, int]:
    crc, size = 0, 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
            size += len(chunk)
    return size, crc
