"""Trains a SentencePiece model on the train split of a corpus.

    python -m lm.data.train_tokenizer --corpus=shakespeare --vocab_size=1024 --model_type=bpe \
        --output=lm/data/vocabs/shakespeare_sp1024

writes ``<output>.model``. Ids follow the seqio convention (pad=0, eos=1, unk=2, no BOS).
The text is kept exactly: identity normalization, no dummy prefix, whitespace kept, newline as
its own piece and byte fallback for unseen characters, so ``decode(encode(text)) == text``.
"""
from __future__ import annotations

import argparse
import pathlib

from lm.data import corpus as corpus_lib
from lm.data import vocab as vocab_lib


def trainer_options(vocab_size: int, model_type: str) -> dict:
    return dict(
        vocab_size=vocab_size,
        model_type=model_type,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1,  # seqio convention
        byte_fallback=True,
        split_digits=True,
        character_coverage=1.0,
        # Keep the text byte-exact so that samples decode to what the model saw.
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        allow_whitespace_only_pieces=True,
        user_defined_symbols=["\n"],  # the trainer reads lines; this keeps newlines as a piece
        max_sentence_length=1 << 16,
        num_threads=1,  # one thread keeps the model reproducible
        minloglevel=2,
    )


def train_tokenizer(corpus: str, vocab_size: int, model_type: str, output: str,
                    train_fraction: float = 0.9) -> pathlib.Path:
    """Trains on ``split_text(corpus, 'train')`` and writes ``<output>.model``; returns its path."""
    import sentencepiece

    text = corpus_lib.split_text(corpus, "train", train_fraction)
    lines = vocab_lib.split_keeping_newlines(text)
    model_path = pathlib.Path(f"{output}.model")
    model_path.parent.mkdir(parents=True, exist_ok=True)
    with open(model_path, "wb") as model_file:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_writer=model_file,
            **trainer_options(vocab_size, model_type))
    return model_path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", default="shakespeare",
                        help="embedded corpus name, .txt file or folder of .txt files")
    parser.add_argument("--vocab_size", type=int, default=1024)
    parser.add_argument("--model_type", default="bpe", choices=["bpe", "unigram", "char", "word"])
    parser.add_argument("--train_fraction", type=float, default=0.9)
    parser.add_argument("--output", required=True, help="output prefix; '.model' is appended")
    args = parser.parse_args(argv)
    path = train_tokenizer(args.corpus, args.vocab_size, args.model_type, args.output,
                           args.train_fraction)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
