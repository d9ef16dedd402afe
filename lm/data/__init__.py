"""Data: embedded corpora, vocabularies, seqio tasks and the input pipeline.

Importing this package never imports TensorFlow; ``lm.data.tasks`` (seqio) is loaded only by
``backend='seqio'`` or by importing it directly. The names below load their module on first
use, so ``python -m lm.data.corpus`` runs without its module being imported twice.

Leaves (``documents``, ``corpus``, ``vocab``, ``config``, ``windows``, ``batches``, ``tokens``,
...) hold configuration, documents and rows; the backends (``array``, ``cache``, ``mixture``,
``synthetic``, ``tasks`` for seqio) import only leaves; the dispatcher ``pipeline`` picks a
config's backend and re-exports the names callers use. The layout is in ``lm.data.pipeline``'s
docstring.
"""
import importlib

_MODULE_OF_NAME = {
    **dict.fromkeys(["CorpusError", "Document"], "lm.data.documents"),
    **dict.fromkeys(["load_documents", "split_documents", "split_text"], "lm.data.corpus"),
    **dict.fromkeys(["BATCH_KEYS", "Batch", "BatchIterator", "DataConfig", "make_eval_batches",
                     "make_train_iterator", "vocab_size", "vocabulary"], "lm.data.pipeline"),
    **dict.fromkeys(["CharVocabulary", "SentencePieceVocabulary", "SyntheticVocabulary",
                     "make_vocabulary", "vocabulary_from_json"], "lm.data.vocab"),
    "as_seqio_vocabulary": "lm.data.seqio_vocab",
    **dict.fromkeys(["Prefetcher", "to_global"], "lm.data.loader"),
}
__all__ = sorted(_MODULE_OF_NAME)


def __getattr__(name):
    if name not in _MODULE_OF_NAME:
        raise AttributeError(f"module 'lm.data' has no attribute {name!r}")
    return getattr(importlib.import_module(_MODULE_OF_NAME[name]), name)


def __dir__():
    return sorted(list(globals()) + __all__)
