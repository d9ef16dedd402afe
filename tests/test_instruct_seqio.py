"""seqio instruction tasks: the loss mask of seqio's PrefixLM converter equals ``instruction_rows``'."""
import warnings

import numpy as np
import pytest

seqio = pytest.importorskip("seqio")

from lm.data import pipeline  # noqa: E402
from lm.instruct import Instance, instruction_dataset, instruction_rows  # noqa: E402
from lm.instruct import seqio_tasks  # noqa: E402

LENGTHS = {"inputs": 128, "targets": 96}  # 224 = seq_len + 1 of the rows compared


@pytest.fixture(scope="module")
def char_vocab():
    return pipeline.vocabulary(pipeline.DataConfig())


def _converted(task_name: str, split: str, lengths=LENGTHS) -> dict[str, np.ndarray]:
    task = seqio.get_mixture_or_task(task_name)
    ds = task.get_dataset(lengths, split=split, shuffle=False, num_epochs=1)
    ds = seqio.PrefixLMFeatureConverter(pack=False, loss_on_targets_only=True)(ds, lengths)
    examples = list(ds.as_numpy_iterator())
    return {key: np.stack([e[key] for e in examples]) for key in examples[0]}


@pytest.mark.parametrize("dataset", ["arithmetic", "arithmetic_cot", "tasks:tasks_example.jsonl"])
def test_prefix_lm_loss_mask_matches_instruction_rows(dataset, char_vocab):
    name = seqio_tasks.register_instruction_task(f"test_instruct_{dataset.split(':')[0]}_{dataset[-3:]}",
                                                 char_vocab, dataset, count=0 if ":" in dataset else 16,
                                                 overwrite=True)
    seqio_rows = _converted(name, "validation")
    count = 0 if ":" in dataset else 16
    ours, report = instruction_rows(instruction_dataset(dataset, "validation", count), char_vocab,
                                    seq_len=sum(LENGTHS.values()) - 1, on_overflow="error")
    assert report.rows == len(seqio_rows["decoder_target_tokens"]) > 0
    # seqio predicts the first token from a start id 0 (weight 0 here); drop that column.
    np.testing.assert_array_equal(seqio_rows["decoder_target_tokens"][:, 1:], ours["targets"])
    np.testing.assert_array_equal(seqio_rows["decoder_loss_weights"][:, 1:], ours["weights"])
    real = ours["targets"] != 0  # seqio's inputs also hold the last EOS on the first padding cell
    np.testing.assert_array_equal(seqio_rows["decoder_input_tokens"][:, 1:][real], ours["inputs"][real])
    assert (ours["targets"][ours["weights"] == 1] == 1).sum() == report.kept  # one EOS each


def test_seqio_task_refuses_what_it_cannot_represent(char_vocab):
    multi = {"train": instruction_dataset("chat:chat_example.jsonl", "train", 0), "validation": []}
    name = seqio_tasks.register_instruction_task("test_instruct_multi_turn", char_vocab, multi, overwrite=True)
    with pytest.raises(ValueError, match=r"instance 2 has 2 responses"):
        seqio.get_mixture_or_task(name).get_dataset(LENGTHS, split="train")
    skipping = seqio_tasks.register_instruction_task("test_instruct_skip", char_vocab, multi,
                                                     multi_turn="skip", overwrite=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert len(_converted(skipping, "train")["decoder_target_tokens"]) == len(multi["train"]) - 2
    assert any("skipped 2 of 8" in str(w.message) for w in caught)
    unknown = {"train": [Instance.from_pair("2+3=", "5")]}
    name = seqio_tasks.register_instruction_task("test_instruct_unk", char_vocab, unknown, overwrite=True)
    with pytest.raises(ValueError, match=r"'\+='"):
        seqio.get_mixture_or_task(name).get_dataset(LENGTHS, split="train")


def test_seqio_task_overflow_errors_or_skips(char_vocab):
    import tensorflow as tf

    short = {"inputs": 40, "targets": 8}  # every prompt is longer than 40 characters
    name = seqio_tasks.register_instruction_task("test_instruct_overflow", char_vocab, "arithmetic",
                                                 count=4, overwrite=True)
    with pytest.raises(tf.errors.InvalidArgumentError, match="has inputs longer than the feature length 40"):
        _converted(name, "train", short)
    name = seqio_tasks.register_instruction_task("test_instruct_overflow_skip", char_vocab, "arithmetic",
                                                 count=4, on_overflow="skip", overwrite=True)
    ds = seqio.get_mixture_or_task(name).get_dataset(short, split="train", shuffle=False)
    assert not list(ds.as_numpy_iterator())
