"""Atomic file writes: a crash leaves the old file or the whole new one, never half of it."""
from __future__ import annotations

import os
import tempfile
from typing import Union


def write_atomically(path: Union[str, os.PathLike], data: Union[str, bytes]) -> None:
    """Writes ``data`` (text is UTF-8) to a temporary file beside ``path``, syncs it, then renames
    it over ``path`` (atomic on POSIX); the temporary file is removed if anything fails."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
