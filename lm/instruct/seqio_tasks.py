"""seqio tasks over instruction datasets (imports seqio and TensorFlow).

Each task has the features 'inputs' (the prompt text) and 'targets' (the response text, EOS
appended), for ``seqio.PrefixLMFeatureConverter`` or ``seqio.DecoderFeatureConverter`` with
``loss_on_targets_only``. With ``PrefixLMFeatureConverter(pack=False)`` and lengths whose sum is
``seq_len + 1``, column j + 1 of its 'decoder_target_tokens', 'decoder_input_tokens' and
'decoder_loss_weights' is column j of ``instruction_rows``' 'targets', 'inputs' and 'weights':
seqio also predicts the first prompt token from a start id 0, which always has weight 0 here.

Only single-turn instances fit the (inputs, targets) shape: text cannot hold the EOS that ends
an earlier assistant turn. ``multi_turn='error'`` (default) raises naming the instance;
'skip' drops them with a warning giving their number. Instances holding characters the
vocabulary lacks raise (seqio would silently encode them as UNK). Examples longer than the
feature lengths raise at iteration with ``on_overflow='error'`` (default; seqio would trim the
response and its EOS), are dropped with 'skip', or trimmed as seqio does with 'trim'.
"""
from __future__ import annotations

import functools
import warnings
from typing import Callable, Mapping, Sequence, Union

import seqio
import tensorflow as tf

from lm.data.seqio_vocab import as_seqio_vocabulary
from lm.instruct.datasets import SPLITS, instruction_dataset
from lm.instruct.instances import Instance
from lm.instruct.rows import check_representable

InstanceSource = Union[str, Mapping[str, Sequence[Instance]], Callable[[str], Sequence[Instance]]]
OVERFLOW_CHOICES = ("error", "skip", "trim")
MULTI_TURN_CHOICES = ("error", "skip")
DEFAULT_DATASETS = ("arithmetic", "arithmetic_cot", "tasks:tasks_example.jsonl",
                    "chat:chat_example.jsonl")


def register_instruction_task(name: str, vocab, dataset: InstanceSource = "arithmetic",
                              count: int = 1000, seed: int = 0, on_overflow: str = "error",
                              multi_turn: str = "error", overwrite: bool = False) -> str:
    """Registers the seqio task ``name`` and returns the name.

    ``dataset``: a name for ``instruction_dataset`` (read with ``count`` and ``seed``), a
    mapping split -> instances, or a function split -> instances. ``vocab``: an ``lm.data.vocab``
    vocabulary (char or SentencePiece). An existing task of that name is kept, like
    ``lm.data.tasks`` does, unless ``overwrite``.
    """
    _check_choice("on_overflow", on_overflow, OVERFLOW_CHOICES)
    _check_choice("multi_turn", multi_turn, MULTI_TURN_CHOICES)
    if name in seqio.TaskRegistry.names():
        if not overwrite:
            return name
        seqio.TaskRegistry.remove(name)
    source = _source(_instances_fn(dataset, count, seed), vocab, multi_turn)
    seqio_vocab = as_seqio_vocabulary(vocab)
    features = {"inputs": seqio.Feature(seqio_vocab, add_eos=False, dtype=tf.int32),
                "targets": seqio.Feature(seqio_vocab, add_eos=True, dtype=tf.int32)}
    preprocessors = [functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=True)]
    preprocessors += _length_preprocessors(on_overflow) + [seqio.preprocessors.append_eos_after_trim]
    seqio.TaskRegistry.add(name, source=source, preprocessors=preprocessors,
                           output_features=features)
    return name


def register_instruction_tasks(vocab, vocab_tag: str = "char", datasets=DEFAULT_DATASETS,
                               count: int = 1000, seed: int = 0) -> list[str]:
    """One task per dataset, named ``instruct_<dataset>_<vocab_tag>``; chat files skip their
    multi-turn transcripts (with a warning) and files use all their lines."""
    names = []
    for dataset in datasets:
        kind, _, path = dataset.partition(":")
        tag = f"{kind}_{_file_tag(path)}" if path else dataset
        names.append(register_instruction_task(
            f"instruct_{tag}_{vocab_tag}", vocab, dataset, count=0 if path else count, seed=seed,
            multi_turn="skip" if kind == "chat" else "error"))
    return names


def _file_tag(path: str) -> str:
    stem = path.rsplit("/", 1)[-1].removesuffix(".jsonl")
    return "".join(c if c.isalnum() else "_" for c in stem.lower())


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} must be one of {', '.join(map(repr, choices))}")


def _instances_fn(dataset: InstanceSource, count: int, seed: int) -> Callable[[str], Sequence[Instance]]:
    if isinstance(dataset, str):
        instruction_dataset(dataset, "train", count, seed)  # a bad name or file fails now
        return lambda split: instruction_dataset(dataset, split, count, seed)
    if isinstance(dataset, Mapping):
        return lambda split: dataset[split] if split in dataset else _no_split(split, dataset)
    if callable(dataset):
        return dataset
    raise TypeError(f"dataset must be a name, a mapping split -> instances or a function, got "
                    f"{type(dataset).__name__}")


def _no_split(split: str, dataset: Mapping) -> None:
    raise ValueError(f"no {split!r} instances: the mapping has splits {sorted(dataset)}")


def _source(instances_fn, vocab, multi_turn: str) -> seqio.FunctionDataSource:
    def dataset_fn(split: str, shuffle_files: bool, seed=None) -> tf.data.Dataset:
        del shuffle_files, seed  # instances come in their dataset's order
        pairs = single_turn_pairs(instances_fn(split), vocab, multi_turn)
        inputs, targets = ([p[0] for p in pairs], [p[1] for p in pairs])
        return tf.data.Dataset.from_tensor_slices(
            {"inputs": tf.constant(inputs, tf.string), "targets": tf.constant(targets, tf.string)})

    return seqio.FunctionDataSource(dataset_fn, splits=SPLITS)


def single_turn_pairs(instances: Sequence[Instance], vocab,
                      multi_turn: str = "error") -> list[tuple[str, str]]:
    """(prompt, response) of each single-turn instance, checked to be representable."""
    pairs, skipped = [], 0
    for index, instance in enumerate(instances):
        if not instance.is_single_turn:
            if multi_turn == "error":
                raise ValueError(f"instance {index} has {len(instance.responses)} responses or "
                                 "text after its response; seqio (inputs, targets) tasks take "
                                 "single-turn instances: use lm.instruct.rows.instruction_rows, "
                                 "or multi_turn='skip'")
            skipped += 1
            continue
        check_representable(instance.text, vocab, f"instance {index}")
        pairs.append((instance.prompt, instance.responses[0]))
    if skipped:
        warnings.warn(f"skipped {skipped} of {len(instances)} instances that are not single-turn")
    return pairs


def _length_preprocessors(on_overflow: str) -> list:
    if on_overflow == "trim":
        return []  # trimmed as every seqio task is (append_eos_after_trim keeps the EOS)
    return [functools.partial(_check_lengths, drop=on_overflow == "skip")]


def _check_lengths(dataset: tf.data.Dataset, sequence_length, drop: bool) -> tf.data.Dataset:
    """Drops, or fails on, examples longer than the feature lengths (after EOS is appended)."""
    if not sequence_length:
        return dataset
    limits = {key: sequence_length[key] for key in ("inputs", "targets")
              if sequence_length.get(key) is not None}
    eos = {"inputs": 0, "targets": 1}  # add_eos of each feature: append_eos_after_trim runs next

    def fits(example):
        checks = [tf.size(example[key]) + eos[key] <= limit for key, limit in limits.items()]
        return tf.reduce_all(tf.stack(checks)) if checks else tf.constant(True)

    if drop:
        return dataset.filter(fits)

    def check(example):
        for key, limit in limits.items():
            tf.debugging.assert_less_equal(
                tf.size(example[key]) + eos[key], limit,
                message=f"an instruction example has {key} longer than the feature length "
                        f"{limit} (targets count their EOS): raise the length or register with on_overflow=skip")
        return example

    return dataset.map(check)
