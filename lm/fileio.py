"""Atomic file writes: a crash leaves the old file or the whole new one, never half of it.

Every file the project writes goes through ``write_atomically``, or ``append_text`` for logs that
grow a record at a time (checkpoints go through orbax); tests/test_file_writes.py refuses other
``open(..., "w")`` calls."""
from __future__ import annotations

import io
import os
import tempfile
import threading
from typing import Union

# What open(path, "w") and os.makedirs give a new file and folder before the umask is applied.
DEFAULT_FILE_MODE = 0o666
DEFAULT_FOLDER_MODE = 0o777

_umask_lock = threading.Lock()


def _umask_from_proc() -> Union[int, None]:
    """The umask as Linux reports it (kernel 4.7+), read without changing it; None elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def current_umask() -> int:
    """The process umask. Python can only read it by setting it, so where /proc does not report
    it the set-and-restore round trip is done under a lock (two writers here never see 0)."""
    umask = _umask_from_proc()
    if umask is not None:
        return umask
    with _umask_lock:
        umask = os.umask(0o077)
        os.umask(umask)
    return umask


def new_file_mode() -> int:
    """The permissions open(path, "w") gives a new file: 0666 less the umask (0644 under 022)."""
    return DEFAULT_FILE_MODE & ~current_umask()


def new_folder_mode() -> int:
    """The permissions os.makedirs gives a new folder: 0777 less the umask (0755 under 022), for
    folders that tempfile.mkdtemp made owner-only (0700) before they are renamed into place."""
    return DEFAULT_FOLDER_MODE & ~current_umask()


def write_atomically(path: Union[str, os.PathLike], data: Union[str, bytes]) -> None:
    """Writes ``data`` (text is UTF-8) to a temporary file beside ``path``, syncs it, then renames
    it over ``path`` (atomic on POSIX); the temporary file is removed if anything fails. The file
    gets the usual permissions (0666 less the umask) and missing folders the usual 0777 less the
    umask, as open() and os.makedirs would give them."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            # mkstemp makes the file owner-only (0600), which would keep others from reading it.
            os.fchmod(f.fileno(), new_file_mode())
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def append_text(path: Union[str, os.PathLike], text: str) -> None:
    """Appends ``text`` (UTF-8) to a log such as metrics.jsonl or samples.txt, creating it (and
    its folder) with the usual permissions. The whole record goes in one O_APPEND write, so a
    reader never sees two records interleaved; a crash can cut off only the last record.
    Rewriting the log through ``write_atomically`` instead would cost the log's length per record."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    payload = memoryview(text.encode("utf-8"))
    # os.open applies the umask to DEFAULT_FILE_MODE itself, as open(path, "a") does.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, DEFAULT_FILE_MODE)
    try:
        while payload:  # os.write may write less than asked (a full disk, a signal)
            payload = payload[os.write(fd, payload):]
    finally:
        os.close(fd)


def save_figure(fig, path: Union[str, os.PathLike], **savefig_options) -> None:
    """A matplotlib figure as a PNG at ``path``, written atomically (savefig would write in place)."""
    image = io.BytesIO()
    fig.savefig(image, format="png", **savefig_options)
    write_atomically(path, image.getvalue())
