"""Exact de-duplication of documents and of paragraphs, by hashes of normalized text."""
from __future__ import annotations

import hashlib
import re

from lm.data.clean.stats import StageStats

_SPACE = re.compile(r"\s+")
_PARAGRAPH_BREAK = re.compile(r"((?:\r?\n)[ \t]*(?:\r?\n)+)")


def normalized_hash(text: str) -> str:
    """Hash of the text with case folded and whitespace runs collapsed."""
    normal = _SPACE.sub(" ", text.casefold()).strip()
    return hashlib.blake2b(normal.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


class DocumentDeduplicator:
    """Keeps the first document of each normalized hash; records which are copies of which."""

    def __init__(self):
        self.first_by_hash: dict[str, str] = {}
        self.clusters: dict[str, list[str]] = {}  # kept name -> names of its copies
        self.stats = StageStats()

    def keep(self, name: str, text: str) -> bool:
        digest = normalized_hash(text)
        original = self.first_by_hash.setdefault(digest, name)
        is_copy = original != name
        if is_copy:
            self.clusters.setdefault(original, []).append(name)
            self.stats.count("duplicate_documents")
            self.stats.add_example(f"{name} == {original}")
        self.stats.record(text, None if is_copy else text)
        return not is_copy


class ParagraphDeduplicator:
    """Drops paragraphs already seen (in this or an earlier document).

    Only paragraphs of at least ``min_chars`` count: short ones ("Exit.", "Enter HAMLET.")
    repeat legitimately everywhere.
    """

    def __init__(self, min_chars: int):
        self.min_chars = min_chars
        self.seen: set[str] = set()
        self.stats = StageStats()

    def dedup(self, text: str) -> str | None:
        pieces = _PARAGRAPH_BREAK.split(text)
        kept = []
        for i in range(0, len(pieces), 2):
            paragraph, separator = pieces[i], pieces[i + 1] if i + 1 < len(pieces) else ""
            if len(paragraph.strip()) >= self.min_chars:
                digest = normalized_hash(paragraph)
                if digest in self.seen:
                    self.stats.count("duplicate_paragraphs")
                    self.stats.add_example(paragraph)
                    continue
                self.seen.add(digest)
            kept.append(paragraph + separator)
        out = "".join(kept)
        out = out if out.strip() else None
        self.stats.record(text, out)
        return out
