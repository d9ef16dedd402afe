"""Trains a SentencePiece tokenizer (PaLM-style options) and reports its tokens per byte.

    python -m lm.data.tokenizer --input=shakespeare --vocab_size=1024 --model_type=bpe \
        --output=/tmp/shakespeare_bpe1024 --compare=lm/data/vocabs/shakespeare_sp1024.model

``--input`` is an embedded corpus name, a .txt file, a folder of .txt files or a glob of them.
The model trains on the leading ``--train_fraction`` of the characters (the corpus 'train'
split) and is measured on the rest ('validation'), as are the ``--compare`` models and the
character vocabulary. Writes ``<output>.model`` and prints one line per tokenizer.

Options follow PaLM: byte fallback (no character is ever UNK), digits split into single
digits, whitespace kept as written (no dummy prefix, no whitespace folding, identity
normalization), so ``decode(encode(text)) == text``. Ids follow the seqio convention (pad=0,
eos=1, unk=2, no BOS); ``--user_defined_symbols`` become single pieces.
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import io
import pathlib

from lm import fileio
from lm.data import corpus as corpus_lib
from lm.data import vocab as vocab_lib

# The trainer reads lines; making '\n' a symbol keeps newlines in the text as one piece.
NEWLINE_SYMBOL = "\n"


@dataclasses.dataclass(frozen=True)
class TokenizerOptions:
    vocab_size: int = 1024
    model_type: str = "bpe"  # 'bpe' | 'unigram'
    byte_fallback: bool = True  # unseen characters become UTF-8 byte pieces, never UNK
    split_digits: bool = True  # every digit its own piece (PaLM): numbers tokenize uniformly
    user_defined_symbols: tuple[str, ...] = ()  # extra special tokens, each one piece
    character_coverage: float = 1.0
    num_threads: int = 1  # one thread keeps the model reproducible


def trainer_options(options: TokenizerOptions) -> dict:
    """Keyword arguments of ``SentencePieceTrainer.train`` for ``options``."""
    symbols = [NEWLINE_SYMBOL] + [s for s in options.user_defined_symbols if s != NEWLINE_SYMBOL]
    return dict(
        vocab_size=options.vocab_size,
        model_type=options.model_type,
        pad_id=vocab_lib.PAD_ID, eos_id=vocab_lib.EOS_ID, unk_id=vocab_lib.UNK_ID, bos_id=-1,
        byte_fallback=options.byte_fallback,
        split_digits=options.split_digits,
        character_coverage=options.character_coverage,
        # Keep the text byte-exact so that samples decode to what the model saw.
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        allow_whitespace_only_pieces=True,
        user_defined_symbols=symbols,
        max_sentence_length=1 << 16,
        num_threads=options.num_threads,
        minloglevel=2,
    )


# ----------------------------------------------------------------------------- input text

def _glob_files(pattern: str) -> list[pathlib.Path]:
    files = sorted(pathlib.Path(p) for p in glob.glob(pattern) if pathlib.Path(p).is_file())
    if not files:
        raise corpus_lib.CorpusError(f"--input={pattern!r} matches no files; give an embedded "
                                     f"corpus ({', '.join(corpus_lib.EMBEDDED)}), a .txt file, "
                                     f"a folder or a glob.")
    return files


def input_text(source: str) -> str:
    """All characters of ``source``: a corpus name, .txt file, folder, or glob of files."""
    if glob.has_magic(source) and source not in corpus_lib.EMBEDDED:
        return "".join(corpus_lib.corpus_text(str(p)) for p in _glob_files(source))
    return corpus_lib.corpus_text(source)


def split_input(source: str, split: str, train_fraction: float = 0.9) -> str:
    """The 'train' (leading) or 'validation' (trailing) characters, as ``corpus.split_text``."""
    if not (glob.has_magic(source) and source not in corpus_lib.EMBEDDED):
        return corpus_lib.split_text(source, split, train_fraction)
    text = input_text(source)
    boundary = corpus_lib.split_boundary(len(text), train_fraction)
    return text[:boundary] if split == "train" else text[boundary:]


# ----------------------------------------------------------------------------- training

def train(text: str, options: TokenizerOptions, output: str) -> pathlib.Path:
    """Trains on ``text`` and writes ``<output>.model``; returns its path."""
    import sentencepiece  # optional native extension, needed only to train

    lines = vocab_lib.split_keeping_newlines(text)
    model = io.BytesIO()  # the trainer hands the model to a writer; the file is written whole
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, **trainer_options(options))
    model_path = pathlib.Path(f"{output}.model")
    fileio.write_atomically(model_path, model.getvalue())
    return model_path


def tokens_per_byte(vocab: vocab_lib.Vocabulary, text: str) -> float:
    """Tokens of ``text`` per UTF-8 byte (lower compresses more; bytes make it vocab-neutral)."""
    return len(vocab.encode_array(text)) / max(1, len(text.encode("utf-8")))


def compression_report(source: str, model_paths: list[str],
                       train_fraction: float = 0.9) -> list[tuple[str, int, float]]:
    """(name, vocab size, tokens per byte on the validation split): char, then each model."""
    text = split_input(source, "validation", train_fraction)
    char_vocab = vocab_lib.CharVocabulary.from_text(input_text(source))
    rows = [("char", char_vocab.vocab_size, tokens_per_byte(char_vocab, text))]
    for path in model_paths:
        vocab = vocab_lib.SentencePieceVocabulary(path)
        rows.append((str(path), vocab.vocab_size, tokens_per_byte(vocab, text)))
    return rows


# ----------------------------------------------------------------------------- command line

def _comma_list(value: str) -> tuple[str, ...]:
    return tuple(item for item in value.split(",") if item)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", default="shakespeare",
                        help="embedded corpus name, .txt file, folder of .txt files, or glob")
    parser.add_argument("--output", required=True, help="output prefix; '.model' is appended")
    parser.add_argument("--vocab_size", type=int, default=TokenizerOptions.vocab_size)
    parser.add_argument("--model_type", default="bpe", choices=["bpe", "unigram"])
    parser.add_argument("--byte_fallback", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--split_digits", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--user_defined_symbols", type=_comma_list, default=(),
                        help="comma-separated special tokens, e.g. '<sep>,<cls>'")
    parser.add_argument("--character_coverage", type=float, default=1.0)
    parser.add_argument("--num_threads", type=int, default=1)
    parser.add_argument("--train_fraction", type=float, default=0.9)
    parser.add_argument("--compare", type=_comma_list, default=(),
                        help="comma-separated .model files to measure on the same text")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    options = TokenizerOptions(
        vocab_size=args.vocab_size, model_type=args.model_type, byte_fallback=args.byte_fallback,
        split_digits=args.split_digits, user_defined_symbols=args.user_defined_symbols,
        character_coverage=args.character_coverage, num_threads=args.num_threads)
    path = train(split_input(args.input, "train", args.train_fraction), options, args.output)
    print(f"wrote {path}")
    print("tokenizer\tvocab_size\ttokens_per_byte (validation)")
    for name, size, ratio in compression_report(args.input, [str(path), *args.compare],
                                                args.train_fraction):
        print(f"{name}\t{size}\t{ratio:.4f}")


if __name__ == "__main__":
    main()
