"""Text corpora: the embedded Project Gutenberg texts, or the user's own .txt / .jsonl files.

Local TFDS and Hugging Face datasets are corpora too ('tfds:...', 'hf:...'; ``lm.data.sources``).
A leaf of ``lm.data``: it imports ``documents`` and ``sources`` only, and ``Document`` and
``CorpusError`` (defined in ``lm.data.documents``) are re-exported here.

A corpus is a sorted list of documents. The embedded ones live in ``lm/data/corpora/`` as
xz-compressed JSON lines (one ``{"name", "text"}`` object per document, sorted by file name,
text byte-exact), so the default experiments need no download. Regenerate them with::

    python -m lm.data.corpus --rebuild=/path/to/gutenberg

The train/validation split follows nanoGPT's ``prepare.py``: the documents are concatenated in
sorted file-name order with no separator and the first ``train_fraction`` of the characters is
'train', the rest 'validation'.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import lzma
import pathlib

from lm import fileio
from lm.data import sources
# Re-exported: callers read both names as lm.data.corpus.<name>.
from lm.data.documents import CorpusError, Document  # noqa: F401

CORPORA_DIR = pathlib.Path(__file__).resolve().parent / "corpora"
SPLITS = ("train", "validation")


@dataclasses.dataclass(frozen=True)
class _EmbeddedSource:
    folder: str  # relative to the gutenberg folder
    pattern: str  # glob of the files to embed


# Embedded corpus name -> where its files come from when rebuilding.
EMBEDDED = {
    # Modern spelling only: the First Folio spellings are the '*_gut_f.txt' files.
    "shakespeare": _EmbeddedSource("shakespeare", "*_gut.txt"),
    "milton": _EmbeddedSource("milton", "*_gut.txt"),
    "britannica": _EmbeddedSource(".", "britannica-11th.txt"),
}


def load_documents(corpus: str) -> list[Document]:
    """The documents of an embedded corpus name, a .txt / .jsonl file or folder of them, or a
    'tfds:' / 'hf:' dataset (``lm.data.sources``)."""
    return list(_load_documents_cached(corpus))


def split_text(corpus: str, split: str, train_fraction: float = 0.9) -> str:
    """The 'train' or 'validation' characters of the concatenated corpus."""
    text = corpus_text(corpus)
    boundary = split_boundary(len(text), train_fraction)
    return text[:boundary] if _check_split(split) == "train" else text[boundary:]


def split_documents(corpus: str, split: str, train_fraction: float = 0.9) -> list[Document]:
    """The documents cut at the split boundary: their concatenation equals ``split_text``."""
    documents = load_documents(corpus)
    boundary = split_boundary(sum(len(d.text) for d in documents), train_fraction)
    keep_train = _check_split(split) == "train"
    pieces, start = [], 0
    for document in documents:
        end = start + len(document.text)
        lo, hi = (start, min(end, boundary)) if keep_train else (max(start, boundary), end)
        if lo < hi:
            pieces.append(Document(document.name, document.text[lo - start:hi - start]))
        start = end
    return pieces


def corpus_text(corpus: str) -> str:
    """All documents concatenated in sorted file-name order, no separator."""
    return _corpus_text_cached(corpus)


def split_boundary(num_chars: int, train_fraction: float) -> int:
    """Index of the first validation character (nanoGPT: ``int(n * 0.9)``)."""
    if not 0.0 < train_fraction < 1.0:
        raise CorpusError(f"train_fraction must lie strictly between 0 and 1, "
                          f"got {train_fraction}.")
    return int(num_chars * train_fraction)


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise CorpusError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}.")
    return split


@functools.lru_cache(maxsize=8)
def _corpus_text_cached(corpus: str) -> str:
    return "".join(d.text for d in _load_documents_cached(corpus))


@functools.lru_cache(maxsize=8)
def _load_documents_cached(corpus: str) -> tuple[Document, ...]:
    if corpus in EMBEDDED:
        documents = _read_embedded(corpus)
    elif sources.is_source(corpus):
        documents = tuple(sources.load_source(corpus))
    else:
        documents = tuple(d for p in _text_files(pathlib.Path(corpus)) for d in _read_file(p))
    if not documents or not any(d.text for d in documents):
        raise CorpusError(f"corpus {corpus!r} has no text; give a non-empty file, folder or dataset.")
    return documents


def _text_files(path: pathlib.Path) -> list[pathlib.Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir()
                       if p.is_file() and p.suffix in (".txt", ".jsonl"))
        if not files:
            raise CorpusError(f"corpus folder {str(path)!r} holds no .txt or .jsonl files; add "
                              f"some or name one of the embedded corpora ({', '.join(EMBEDDED)}).")
        return files
    if path.is_file():
        return [path]
    raise CorpusError(f"corpus {str(path)!r} is neither an embedded corpus "
                      f"({', '.join(EMBEDDED)}) nor an existing .txt file or folder; "
                      f"check config.data.corpus.")


def _read_file(path: pathlib.Path) -> list[Document]:
    """A .txt file is one document; a .jsonl file one per line (e.g. lm.data.clean's shards)."""
    document = _read_text_file(path)
    if path.suffix != ".jsonl":
        return [document]
    return _jsonl_documents(path, document.text)


def _jsonl_documents(path: pathlib.Path, text: str) -> list[Document]:
    documents = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            documents.append(Document(str(record.get("name", f"{path.name}:{number}")),
                                      record["text"]))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise CorpusError(f"{str(path)!r} line {number} is not a JSON object with a 'text' "
                              f"field; fix or remove that line.") from None
    return documents


def _read_text_file(path: pathlib.Path) -> Document:
    try:
        raw = path.read_bytes()  # bytes, so '\r\n' survives as written
    except OSError as e:
        raise CorpusError(f"cannot read corpus file {str(path)!r} ({e.strerror}); "
                          f"check its permissions.") from None
    if not raw:
        raise CorpusError(f"corpus file {str(path)!r} is empty; remove it or give it text.")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorpusError(f"corpus file {str(path)!r} is not valid UTF-8 (byte {e.start}); "
                          f"convert it, e.g. `iconv -f latin1 -t utf-8`.") from None
    return Document(path.name, text)


def _embedded_path(corpus: str) -> pathlib.Path:
    return CORPORA_DIR / f"{corpus}.jsonl.xz"


def _read_embedded(corpus: str) -> tuple[Document, ...]:
    path = _embedded_path(corpus)
    if not path.exists():
        raise CorpusError(f"embedded corpus file {str(path)!r} is missing; regenerate it with "
                          f"`python -m lm.data.corpus --rebuild=/path/to/gutenberg`.")
    with lzma.open(path, "rt", encoding="utf-8", newline="") as f:
        return tuple(Document(**json.loads(line)) for line in f)


def _source_files(gutenberg_dir: pathlib.Path, source: _EmbeddedSource) -> list[pathlib.Path]:
    files = sorted((gutenberg_dir / source.folder).glob(source.pattern))
    if not files:
        folder = str(gutenberg_dir / source.folder)
        raise CorpusError(f"no {source.pattern!r} files under {folder!r}; "
                          f"point --rebuild at the 'gutenberg' data folder.")
    return files


def rebuild_embedded(gutenberg_dir: str) -> dict[str, int]:
    """Rewrites ``lm/data/corpora/*.jsonl.xz`` from the Gutenberg folder.

    Returns the number of documents of each corpus.
    """
    counts = {}
    for corpus, source in EMBEDDED.items():
        documents = [_read_text_file(p) for p in _source_files(pathlib.Path(gutenberg_dir), source)]
        lines = "".join(json.dumps(dataclasses.asdict(d), ensure_ascii=False) + "\n"
                        for d in documents)
        compressed = lzma.compress(lines.encode("utf-8"), preset=9 | lzma.PRESET_EXTREME)
        fileio.write_atomically(_embedded_path(corpus), compressed)  # creates CORPORA_DIR
        counts[corpus] = len(documents)
    _load_documents_cached.cache_clear()
    _corpus_text_cached.cache_clear()
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rebuild", required=True, metavar="GUTENBERG_DIR",
                        help="folder holding shakespeare/, milton/ and britannica-11th.txt")
    counts = rebuild_embedded(parser.parse_args(argv).rebuild)
    for corpus, count in counts.items():
        print(f"{_embedded_path(corpus)}: {count} documents")


if __name__ == "__main__":
    main()
