"""Per-stage counters: documents and bytes in and out, and a few examples of removed text."""
from __future__ import annotations

import dataclasses

MAX_EXAMPLES = 3
EXAMPLE_CHARS = 300


@dataclasses.dataclass
class StageStats:
    documents_in: int = 0
    documents_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    counts: dict[str, int] = dataclasses.field(default_factory=dict)  # e.g. reason -> n
    examples: list[str] = dataclasses.field(default_factory=list)

    def record(self, text_in: str, text_out: str | None) -> None:
        """One document went through: ``text_out`` None means it was dropped."""
        self.documents_in += 1
        self.bytes_in += utf8_len(text_in)
        if text_out is not None:
            self.documents_out += 1
            self.bytes_out += utf8_len(text_out)

    def count(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    def add_example(self, removed: str) -> None:
        if removed.strip() and len(self.examples) < MAX_EXAMPLES:
            self.examples.append(removed.strip()[:EXAMPLE_CHARS])

    def merge(self, other: StageStats) -> None:
        self.documents_in += other.documents_in
        self.documents_out += other.documents_out
        self.bytes_in += other.bytes_in
        self.bytes_out += other.bytes_out
        for key, n in other.counts.items():
            self.count(key, n)
        for example in other.examples:
            self.add_example(example)


def utf8_len(text: str) -> int:
    return len(text.encode("utf-8", errors="surrogatepass"))
