"""Listing and reading input files; every unreadable or junk input becomes a skip reason."""
from __future__ import annotations

import glob
import os
import pathlib
import re

from lm.data.clean.config import InputLimits

# Control characters other than tab, newline, carriage return and form feed (C0, DEL, C1).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f]")


class SkippedInput(Exception):
    """An input that is not used; the message is the reason shown in the report."""


def list_inputs(pattern: str) -> list[pathlib.Path]:
    """The .txt files of a directory (recursively) or of a glob, sorted."""
    path = pathlib.Path(pattern)
    if path.is_dir():
        return sorted(p for p in path.rglob("*.txt") if p.is_file())
    return sorted(pathlib.Path(p) for p in glob.glob(pattern, recursive=True)
                  if os.path.isfile(p))


def read_text(path: pathlib.Path, limits: InputLimits) -> str:
    """The file's text, or ``SkippedInput`` saying why it cannot be used."""
    try:
        size = path.stat().st_size
        if size > limits.max_document_bytes:  # checked before reading: never load it
            raise SkippedInput(f"too large: {size} bytes > max_document_bytes="
                               f"{limits.max_document_bytes}")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SkippedInput("vanished: listed but gone when read") from None
    except OSError as e:
        raise SkippedInput(f"unreadable: {e.strerror}") from None
    return _decode_checked(raw, limits)


def _decode_checked(raw: bytes, limits: InputLimits) -> str:
    if not raw.strip():
        raise SkippedInput("empty")
    if b"\x00" in raw:
        raise SkippedInput("binary: contains NUL bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SkippedInput(f"invalid UTF-8 at byte {e.start}") from None
    nonprintable = len(_CONTROL.findall(text))
    if nonprintable > limits.max_nonprintable_fraction * len(text):
        raise SkippedInput(f"binary: {nonprintable / len(text):.1%} non-printable characters")
    longest_line = max(map(len, text.splitlines()), default=0)
    if longest_line > limits.max_line_chars:
        raise SkippedInput(f"line of {longest_line} characters > max_line_chars="
                           f"{limits.max_line_chars}")
    return text
