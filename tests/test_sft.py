"""config.mode='sft' (lm/train/sft.py): instruction batches, starting from a pretrained
checkpoint, frozen parameters under PEFT, before/after exact match, resumption."""
from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from experiments import sft_arithmetic
from tests.helpers import pretrained_smoke_run
from lm.configlib import ConfigError
from lm.train.sft import eval_row_batches, final_answer, mixture_parts, sft


def test_mixture_parts():
    assert mixture_parts("arithmetic") == [("arithmetic", 1.0)]
    assert mixture_parts("arithmetic*0.9, chat:data/x.jsonl*0.1") == [("arithmetic", 0.9),
                                                                      ("chat:data/x.jsonl", 0.1)]
    with pytest.raises(ConfigError, match="weight"):
        mixture_parts("arithmetic*lots")
    with pytest.raises(ConfigError, match="empty"):
        mixture_parts(" , ")


def _arrays(rows: int, length: int = 5) -> dict[str, np.ndarray]:
    ids = np.arange(rows * length, dtype=np.int32).reshape(rows, length)
    return {"inputs": ids, "targets": ids + 1, "weights": np.ones((rows, length), np.float32),
            "positions": np.tile(np.arange(length, dtype=np.int32), (rows, 1))}


def test_eval_row_batches_pad_without_weight():
    arrays = _arrays(5)
    batches = eval_row_batches(arrays, batch_size=4)
    assert len(batches) == 2
    assert sum(float(b["weights"].sum()) for b in batches) == arrays["weights"].sum()
    np.testing.assert_array_equal(batches[1]["inputs"][0], arrays["inputs"][4])


def test_final_answer():
    assert final_answer("7 plus 8 is 15, write 5 carry 1. The answer is 85.") == "85"
    assert final_answer(" 85") == "85"
    assert final_answer("no number") == "no number"


def _smoke_base(tmp_path) -> str:
    return pretrained_smoke_run(str(tmp_path / "base"))


def _sft_config(base: str, method: str):
    config = sft_arithmetic.get_config("smoke")
    config.init_from = base
    config.peft.method = method
    config.train.progress = False
    return config


def _leaves(params) -> dict:
    return {jax.tree_util.keystr(path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_leaves_with_path(params)}


@pytest.mark.parametrize("method", [pytest.param("full", marks=pytest.mark.slow), "lora"])
def test_sft_from_a_pretrained_run(tmp_path, method):
    from lm.eval.trained import scorer_from_workdir

    base = _smoke_base(tmp_path)
    workdir = str(tmp_path / method)
    result = sft(_sft_config(base, method), workdir, devices=jax.devices()[:1])
    for key in ("sft/before/exact_match", "sft/after/exact_match", "peft/trainable_params", "eval/loss"):
        assert key in result, key
    saved = json.load(open(os.path.join(workdir, "sft_result.json")))
    assert saved["sft/after/exact_match"] == result["sft/after/exact_match"]
    assert len(open(os.path.join(workdir, "sft_answers.jsonl")).read().splitlines()) == 16
    before = _leaves(scorer_from_workdir(base).params)
    after = _leaves(scorer_from_workdir(workdir).params)
    shared = [k for k in before if k in after]
    changed = [k for k in shared if not np.array_equal(before[k], after[k])]
    if method == "full":
        assert len(shared) == len(after) and changed  # same tree, trained
    else:
        assert not changed  # the base is bitwise frozen
        new = [k for k in after if k not in before]
        assert new and all("lora" in k for k in new)
        assert os.path.isdir(os.path.join(workdir, "adapter")) or os.path.exists(os.path.join(workdir, "adapter"))
        assert result["peft/trainable_params"] == sum(after[k].size for k in new)
    again = sft(_sft_config(base, method), workdir, devices=jax.devices()[:1])  # finished: resumes, no retraining
    assert again["sft/after/exact_match"] == result["sft/after/exact_match"]
    assert again["sft/before/exact_match"] == result["sft/before/exact_match"]


def test_sft_needs_a_starting_point(tmp_path):
    config = _sft_config(str(tmp_path / "nothing"), "full")
    config.sft.pretrain_config = ""
    with pytest.raises(Exception, match="holds no checkpoint"):
        sft(config, str(tmp_path / "run"), devices=jax.devices()[:1])
    config.init_from = ""
    with pytest.raises(ConfigError, match="init_from"):
        sft(config, str(tmp_path / "run"), devices=jax.devices()[:1])
