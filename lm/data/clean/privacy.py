"""Personal-data reduction: e-mail addresses, phone numbers, IPv4 addresses and credentials in
URLs become placeholders, each kind counted."""
from __future__ import annotations

import re

from lm.data.clean.stats import StageStats

# Order matters: credentials first (their host may be an IP, their user part looks like an
# e-mail), then e-mails, IPs (before phones: '192.168.0.1' is no phone number), phones.
_PATTERNS = (
    ("<CREDENTIALS>", re.compile(r"(?<=://)[^\s:/@]+:[^\s/@]+(?=@)")),
    ("<EMAIL>", re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
                           r"\.[A-Za-z]{2,}\b")),
    ("<IP>", re.compile(r"\b(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}"
                        r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\b")),
    # International (+44 20 7946 0958) or North-American style ((555) 123-4567, 555-123-4567).
    # At least 9 digits with separators, so years ('1564--1616') and page refs stay.
    ("<PHONE>", re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])"
                           r"\d{3,4}[ .-]\d{3,4}\b")),
)


def reduce_personal_data(text: str, stats: StageStats) -> str:
    """The text with placeholders; counts per placeholder go to ``stats.counts``."""
    out = text
    for placeholder, pattern in _PATTERNS:
        out, n = pattern.subn(placeholder, out)
        if n:
            stats.count(placeholder, n)
            stats.add_example(f"{n} x {placeholder}")
    stats.record(text, out)
    return out
