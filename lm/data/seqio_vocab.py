"""Vocabularies as ``seqio.Vocabulary``: the same ids in Python and in TensorFlow.

Imports seqio and TensorFlow, so only the seqio backend (``lm.data.tasks``) and seqio evaluation
tasks load it; ``lm.data.vocab`` stays pure Python/NumPy.
"""
from __future__ import annotations

import seqio
import tensorflow as tf

from lm.data import vocab as vocab_lib


class SeqioCharVocabulary(seqio.Vocabulary):
    """``CharVocabulary`` for seqio: the same ids in Python and in TensorFlow."""

    def __init__(self, vocab: vocab_lib.CharVocabulary):
        super().__init__(extra_ids=0)
        self.char_vocab = vocab
        self._codepoint_to_id = tf.constant(vocab.codepoint_to_id_table())
        self._id_to_codepoint = tf.constant(vocab.id_to_codepoint_table())

    @property
    def bos_id(self):
        return None

    @property
    def eos_id(self) -> int:
        return vocab_lib.EOS_ID

    @property
    def unk_id(self) -> int:
        return vocab_lib.UNK_ID

    @property
    def _base_vocab_size(self) -> int:
        return self.char_vocab.vocab_size

    def _encode(self, s: str) -> list[int]:
        return self.char_vocab.encode(s)

    def _decode(self, ids) -> str:
        return self.char_vocab.decode(ids)

    def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
        codepoints = tf.strings.unicode_decode(s, "UTF-8")
        last = tf.shape(self._codepoint_to_id)[0] - 1
        return tf.gather(self._codepoint_to_id, tf.minimum(codepoints, last))

    def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        ids = tf.convert_to_tensor(ids, tf.int32)
        keep = tf.logical_and(tf.not_equal(ids, vocab_lib.PAD_ID), tf.not_equal(ids, self.eos_id))
        kept = tf.ragged.boolean_mask(ids, keep)
        unknown = tf.logical_or(kept < 0, kept >= self._base_vocab_size)
        kept = tf.where(unknown, tf.ones_like(kept) * self.unk_id, kept)
        return tf.strings.unicode_encode(tf.gather(self._id_to_codepoint, kept), "UTF-8")

    def __eq__(self, other) -> bool:
        return (isinstance(other, SeqioCharVocabulary)
                and other.char_vocab.chars == self.char_vocab.chars)

    def __hash__(self) -> int:
        return hash(self.char_vocab.chars)


def as_seqio_vocabulary(vocab: vocab_lib.Vocabulary) -> seqio.Vocabulary:
    """A ``seqio.Vocabulary`` with the same ids, usable in seqio tasks."""
    if isinstance(vocab, vocab_lib.SentencePieceVocabulary):
        return seqio.SentencePieceVocabulary(vocab.model_path)
    if isinstance(vocab, vocab_lib.CharVocabulary):
        return SeqioCharVocabulary(vocab)
    raise TypeError(f"no seqio vocabulary for {type(vocab).__name__}.")
