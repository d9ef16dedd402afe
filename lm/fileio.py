"""Atomic file writes: a crash leaves the old file or the whole new one, never half of it.

Every file the project writes goes through ``write_atomically``, or ``append_text`` for logs that
grow a record at a time (checkpoints go through orbax); tests/test_file_writes.py refuses other
``open(..., "w")`` calls. ``unwritable_reason`` tells before a run starts whether it could write
where it was pointed, ``write_failure`` turns a failed write into one line naming the path."""
from __future__ import annotations

import errno
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
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(path) + ".", suffix=".tmp")
    except OSError as e:
        _raise_naming(e, path, instead_of=e.filename)
    try:
        with os.fdopen(fd, "wb") as f:
            # mkstemp makes the file owner-only (0600), which would keep others from reading it.
            os.fchmod(f.fileno(), new_file_mode())
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError):
            _raise_naming(e, path, instead_of=tmp)
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
    except OSError as e:
        _raise_naming(e, path)
    finally:
        os.close(fd)


def save_figure(fig, path: Union[str, os.PathLike], **savefig_options) -> None:
    """A matplotlib figure as a PNG at ``path``, written atomically (savefig would write in place)."""
    image = io.BytesIO()
    fig.savefig(image, format="png", **savefig_options)
    write_atomically(path, image.getvalue())


# ----------------------------------------------------------------------------- write failures

# Errors that only writing raises: whatever the path, the message is "cannot write".
_WRITE_ONLY_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}
# Errors that writing raises when the path is not ours or a file is in the way; reading can
# raise them too, so they count only with a path that shows it (see write_failure).
_PATH_ERRNOS = {errno.EACCES, errno.ENOTDIR, errno.EEXIST}
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def _raise_naming(error: OSError, path: str, instead_of: Union[str, None] = None) -> None:
    """Raises ``error`` naming ``path`` where it named no file (a write to a full disk) or only
    the temporary file ``instead_of``, so that its message says which file could not be written."""
    if error.errno is None or error.filename not in (None, instead_of):
        raise error
    raise type(error)(error.errno, error.strerror, path) from error


def write_failure(error: OSError, flag: str = "the output path") -> Union[str, None]:
    """'cannot write <path>: <reason>; <fix>' for an OSError that writing a file or folder raised
    (a full disk, a read-only or not-writable folder, a file where a folder should be), the fix
    naming ``flag``, the option that chose where to write; None for any other OSError, which is
    not a mistake in where to write."""
    reason = _unwritable_path(error)
    if reason is None:
        return None
    if error.errno in NO_SPACE_ERRNOS:
        return f"{reason}; free space on that disk (or point {flag} at another one) and run again"
    return f"{reason}; point {flag} at a folder you can write to"


def _unwritable_path(error: OSError) -> Union[str, None]:
    path = error.filename2 if error.filename2 is not None else error.filename  # rename: the target
    reason = error.strerror or os.strerror(error.errno or 0)
    if error.errno in _WRITE_ONLY_ERRNOS:
        return f"cannot write {path if path is not None else 'to disk'}: {reason}"
    if error.errno not in _PATH_ERRNOS or path is None:
        return None
    path = os.fspath(path)
    if error.errno == errno.EACCES:
        # A file that cannot be read is not a place that cannot be written.
        return f"cannot write {path}: {reason}" if _denied_writing(path) else None
    blocker = _file_in_the_way(path, itself=error.errno == errno.EEXIST)
    if blocker is None:
        return None  # e.g. a folder made twice: a bug, not a place that cannot be written
    return f"cannot write {path}: {reason} ({blocker} is a file, not a folder)"


def _denied_writing(path: str) -> bool:
    if os.path.lexists(path) and not os.path.isdir(path):
        return not os.access(path, os.W_OK) or not _can_add_to(os.path.dirname(os.path.abspath(path)))
    return unwritable_reason(path) is not None


def _file_in_the_way(path: str, itself: bool = False) -> Union[str, None]:
    """The nearest existing ancestor of ``path`` (or ``path`` ``itself``) if it is not a folder."""
    folder = os.path.abspath(path) if itself else os.path.dirname(os.path.abspath(path))
    while not os.path.lexists(folder):
        folder = os.path.dirname(folder)
    return None if os.path.isdir(folder) else folder


def _can_add_to(folder: str) -> bool:
    return os.access(folder, os.W_OK | os.X_OK)


def _read_only_filesystem(folder: str) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def unwritable_reason(path: Union[str, os.PathLike], folder: bool = True) -> Union[str, None]:
    """Why a folder (``folder=True``: one to create or to add files to) or a file could not be
    written at ``path``, found without creating anything: a file in the way, a read-only file
    system, a folder without write permission. None when writing looks possible (a full disk
    shows only when writing)."""
    path = os.path.abspath(os.fspath(path))
    if os.path.lexists(path) and os.path.isdir(path) != folder:
        return f"{path} is a {'file, not a folder' if folder else 'folder, not a file'}"
    where = path if folder and os.path.isdir(path) else os.path.dirname(path)
    while not os.path.lexists(where):
        where = os.path.dirname(where)
    if not os.path.isdir(where):
        return f"{where} is a file, not a folder"
    if _can_add_to(where):
        return None
    if _read_only_filesystem(where):
        return f"{where} is on a read-only file system"
    return f"no permission to write in {where}"
