"""JSONL shard output, each shard written to a temporary file and renamed when complete, so a
crash never leaves a half-written shard and never touches the shards already written."""
from __future__ import annotations

import json
import pathlib

from lm import fileio


def write_atomically(path: pathlib.Path, data: str) -> None:
    # Text may hold lone surrogates from undecodable input bytes: written back as they came.
    fileio.write_atomically(path, data.encode("utf-8", "surrogatepass"))


class ShardWriter:
    def __init__(self, output_dir: pathlib.Path, documents_per_shard: int):
        self.output_dir = output_dir
        self.documents_per_shard = documents_per_shard
        self.pending: list[str] = []
        self.written: list[str] = []  # shard file names
        output_dir.mkdir(parents=True, exist_ok=True)

    def add(self, name: str, text: str) -> None:
        self.pending.append(json.dumps({"name": name, "text": text}, ensure_ascii=False) + "\n")
        if len(self.pending) >= self.documents_per_shard:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        shard_name = f"shard-{len(self.written):05d}.jsonl"
        write_atomically(self.output_dir / shard_name, "".join(self.pending))
        self.written.append(shard_name)
        self.pending = []


def read_shards(output_dir: pathlib.Path) -> list[dict[str, str]]:
    """All documents of the shards in ``output_dir``, in order."""
    documents = []
    for shard in sorted(output_dir.glob("shard-*.jsonl")):
        with open(shard, encoding="utf-8") as f:
            documents.extend(json.loads(line) for line in f)
    return documents
