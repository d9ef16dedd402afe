"""Trains a SentencePiece model on the train split of a corpus (kept for existing commands).

    python -m lm.data.train_tokenizer --corpus=shakespeare --vocab_size=1024 --model_type=bpe \
        --output=lm/data/vocabs/shakespeare_sp1024

writes ``<output>.model`` with the options of ``lm.data.tokenizer`` (which also takes files,
globs and special tokens and reports tokens per byte). Ids follow the seqio convention
(pad=0, eos=1, unk=2, no BOS) and ``decode(encode(text)) == text``.
"""
from __future__ import annotations

import argparse
import pathlib

from lm.data import corpus as corpus_lib
from lm.data import tokenizer as tokenizer_lib


def trainer_options(vocab_size: int, model_type: str) -> dict:
    return tokenizer_lib.trainer_options(
        tokenizer_lib.TokenizerOptions(vocab_size=vocab_size, model_type=model_type))


def train_tokenizer(corpus: str, vocab_size: int, model_type: str, output: str,
                    train_fraction: float = 0.9) -> pathlib.Path:
    """Trains on ``split_text(corpus, 'train')`` and writes ``<output>.model``; returns its path."""
    options = tokenizer_lib.TokenizerOptions(vocab_size=vocab_size, model_type=model_type)
    return tokenizer_lib.train(corpus_lib.split_text(corpus, "train", train_fraction), options,
                               output)


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
