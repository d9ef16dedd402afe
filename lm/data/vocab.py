"""Vocabularies: characters, SentencePiece, and a stand-in for synthetic data.

All follow the seqio id convention: 0 = PAD, 1 = EOS, 2 = UNK, real tokens from 3. Pure
Python/NumPy, a leaf of ``lm.data`` that imports only ``corpus`` (the characters of a char
vocabulary); the seqio form of a vocabulary is ``lm.data.seqio_vocab.as_seqio_vocabulary``.

Common interface: ``encode(text) -> list[int]``, ``encode_array(text) -> int32 array``,
``decode(ids) -> str`` (skips PAD and EOS, never stops early), ``vocab_size``, ``pad_id``,
``eos_id``, ``unk_id``, ``to_json()`` and ``vocabulary_from_json``. Characters a vocabulary lacks
encode as UNK; ``unknown_characters`` names them (sampling warns about them in a prompt).
"""
from __future__ import annotations

import json
import pathlib
from typing import Iterable, Sequence

import numpy as np

from lm.data import corpus as corpus_lib

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
NUM_RESERVED = 3  # PAD, EOS, UNK
UNK_TEXT = "\N{REPLACEMENT CHARACTER}"  # what UNK (and any unknown id) decodes to
VOCABS_DIR = pathlib.Path(__file__).resolve().parent / "vocabs"
DEFAULT_SENTENCEPIECE_MODEL = VOCABS_DIR / "shakespeare_sp1024.model"
KINDS = ("char", "sentencepiece")


class _ReservedIds:
    """The seqio-convention special ids shared by every vocabulary here."""
    pad_id, eos_id, unk_id = PAD_ID, EOS_ID, UNK_ID


class CharVocabulary(_ReservedIds):
    """One id per character: ``chars[k]`` has id ``k + 3``; unknown characters map to UNK."""

    def __init__(self, chars: Sequence[str]):
        chars = list(chars)
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise ValueError("CharVocabulary needs distinct single characters.")
        self.chars = "".join(chars)
        self._id_of_char = {c: i + NUM_RESERVED for i, c in enumerate(chars)}
        self._id_of_codepoint = self._codepoint_table(chars)
        self._char_of_id = np.array([""] * NUM_RESERVED + chars, dtype=object)

    @classmethod
    def from_text(cls, text: str) -> "CharVocabulary":
        """The sorted set of characters of ``text`` (nanoGPT's ``sorted(list(set(data)))``)."""
        return cls(sorted(set(text)))

    @staticmethod
    def _codepoint_table(chars: Sequence[str]) -> np.ndarray:
        # A dense codepoint -> id table makes encoding one vectorized gather.
        codepoints = np.array([ord(c) for c in chars], dtype=np.int64)
        table = np.full(int(codepoints.max(initial=0)) + 2, UNK_ID, dtype=np.int32)
        table[codepoints] = np.arange(NUM_RESERVED, NUM_RESERVED + len(chars), dtype=np.int32)
        return table  # the last entry stays UNK: every codepoint past the table clips onto it

    @property
    def vocab_size(self) -> int:
        return NUM_RESERVED + len(self.chars)

    def codepoint_to_id_table(self) -> np.ndarray:
        """int32 [max codepoint + 2]: id of each codepoint; clip larger codepoints to the end."""
        return self._id_of_codepoint

    def id_to_codepoint_table(self) -> np.ndarray:
        """int32 [vocab_size]: codepoint of each id; reserved ids give U+FFFD."""
        return np.array([ord(UNK_TEXT)] * NUM_RESERVED + [ord(c) for c in self.chars], np.int32)

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def encode_array(self, text: str) -> np.ndarray:
        codepoints = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        return self._id_of_codepoint[np.minimum(codepoints, len(self._id_of_codepoint) - 1)]

    def decode(self, ids: Iterable[int]) -> str:
        ids = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.int64)
        ids = ids[(ids != PAD_ID) & (ids != EOS_ID)]
        unknown = (ids < NUM_RESERVED) | (ids >= self.vocab_size)
        pieces = self._char_of_id[np.where(unknown, 0, ids)]
        pieces[unknown] = UNK_TEXT
        return "".join(pieces)

    def to_json(self) -> str:
        return json.dumps({"kind": "char", "chars": self.chars}, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> "CharVocabulary":
        return cls(json.loads(text)["chars"])


class SentencePieceVocabulary(_ReservedIds):
    """A SentencePiece model trained with pad=0, eos=1, unk=2 and no BOS (lm.data.tokenizer)."""

    def __init__(self, model_path: str | pathlib.Path):
        import sentencepiece  # optional native extension: char vocabularies never load it

        self.model_path = str(model_path)
        if not pathlib.Path(self.model_path).is_file():
            raise ValueError(f"SentencePiece model {self.model_path!r} not found; train one with "
                             f"`python -m lm.data.tokenizer` or fix config.data.vocab_model.")
        self._processor = sentencepiece.SentencePieceProcessor(model_file=self.model_path)
        self._check_reserved_ids()
        # With '\n' as its own piece no piece spans a newline, so lines encode independently.
        self._newline_is_piece = self._processor.piece_to_id("\n") != UNK_ID

    def _check_reserved_ids(self) -> None:
        got = (self._processor.pad_id(), self._processor.eos_id(), self._processor.unk_id())
        if got != (PAD_ID, EOS_ID, UNK_ID):
            raise ValueError(f"SentencePiece model {self.model_path!r} has pad/eos/unk ids {got}; "
                             f"retrain it with pad_id=0, eos_id=1, unk_id=2.")

    @property
    def vocab_size(self) -> int:
        return self._processor.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self._processor.encode(text)

    def encode_array(self, text: str) -> np.ndarray:
        if not self._newline_is_piece:
            return np.asarray(self._processor.encode(text), dtype=np.int32)
        # Line by line (batched) is about 3x faster than one call on megabytes of text.
        ids_per_line = self._processor.encode(split_keeping_newlines(text))
        return np.fromiter((i for ids in ids_per_line for i in ids), dtype=np.int32)

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        size = self.vocab_size
        return self._processor.decode([UNK_ID if i >= size else i for i in ids
                                       if i not in (PAD_ID, EOS_ID)])

    def to_json(self) -> str:
        return json.dumps({"kind": "sentencepiece", "model_path": self.model_path})

    @classmethod
    def from_json(cls, text: str) -> "SentencePieceVocabulary":
        return cls(json.loads(text)["model_path"])


def split_keeping_newlines(text: str) -> list[str]:
    """Lines ending in '\n' (only '\n': unlike ``splitlines``, '\r' etc. stay inside lines)."""
    lines = [line + "\n" for line in text.split("\n")]
    lines[-1] = lines[-1][:-1]
    return [line for line in lines if line]


class SyntheticVocabulary(_ReservedIds):
    """Ids without text, for synthetic benchmarks: decodes ids as space-separated numbers."""

    def __init__(self, size: int):
        self.size = int(size)

    @property
    def vocab_size(self) -> int:
        return self.size

    def encode(self, text: str) -> list[int]:
        return [int(piece) for piece in text.split()]

    def encode_array(self, text: str) -> np.ndarray:
        return np.asarray(self.encode(text), dtype=np.int32)

    def decode(self, ids: Iterable[int]) -> str:
        return " ".join(str(int(i)) for i in ids if int(i) not in (PAD_ID, EOS_ID))

    def to_json(self) -> str:
        return json.dumps({"kind": "synthetic", "size": self.size})

    @classmethod
    def from_json(cls, text: str) -> "SyntheticVocabulary":
        return cls(json.loads(text)["size"])


Vocabulary = CharVocabulary | SentencePieceVocabulary | SyntheticVocabulary
_CLASS_OF_KIND = {"char": CharVocabulary, "sentencepiece": SentencePieceVocabulary,
                  "synthetic": SyntheticVocabulary}


def unknown_characters(vocab, text: str) -> list[str]:
    """The distinct characters of ``text`` that ``vocab`` encodes as UNK, in order of first
    appearance (a SentencePiece model with byte fallback has none); none for synthetic ids,
    which are not text."""
    if isinstance(vocab, SyntheticVocabulary):
        return []
    unk_id = getattr(vocab, "unk_id", UNK_ID)
    if unk_id not in vocab.encode(text):
        return []
    return [char for char in dict.fromkeys(text) if unk_id in vocab.encode(char)]


def vocabulary_from_json(text: str) -> Vocabulary:
    """Rebuilds any vocabulary from its ``to_json()``."""
    return _CLASS_OF_KIND[json.loads(text)["kind"]].from_json(text)


def make_vocabulary(kind: str, corpus: str, model_path: str | None = None) -> Vocabulary:
    """A vocabulary of ``kind``.

    'char': the sorted characters of the whole ``corpus`` (both splits, as nanoGPT);
    'sentencepiece': the model at ``model_path``, by default the shipped shakespeare_sp1024.
    """
    if kind == "char":
        return CharVocabulary.from_text(corpus_lib.corpus_text(corpus))
    if kind == "sentencepiece":
        return SentencePieceVocabulary(model_path or DEFAULT_SENTENCEPIECE_MODEL)
    raise ValueError(f"unknown vocabulary kind {kind!r}; use one of {', '.join(KINDS)}.")

