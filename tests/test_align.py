"""Alignment modes (lm.align): the invariants of their first step, one step on the mesh against
one device, LoRA's reference, resumption and bad input."""
from __future__ import annotations

import json
import math
import os
import shutil

import jax
import numpy as np
import pytest

from experiments import align_arithmetic
from tests.helpers import pretrained_smoke_run
from lm.align.modes import pair_training
from lm.align.policy import policy_training
from lm.configlib import ConfigError

MESH = {"data": 2, "fsdp": 2, "tensor": 2}
LN2 = math.log(2.0)


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    """A run the alignment modes start from (the smoke demo: no PEFT, a causal decoder)."""
    return pretrained_smoke_run(str(tmp_path_factory.mktemp("align") / "start"))


def _config(mode: str, start: str, mesh: dict | None = None, **align):
    config = align_arithmetic.get_config(f"{mode}_smoke")
    config.init_from = start
    config.train.progress = False
    config.align.update(align)
    for axis, size in (mesh or {}).items():
        config.mesh[axis] = size
    return config


def _first_steps(config, workdir: str, devices, steps: int = 1):
    """The parameters and metrics after ``steps`` train steps of a fresh start."""
    setup = pair_training if config.mode in ("reward", "dpo") else policy_training
    trainer, batches, _, _, _ = setup(config, workdir, devices, evaluate=False)
    state = trainer.state_from_params(trainer.initial_params())
    history = []
    for _ in range(steps):
        state, metrics = trainer.train_step(state, trainer.place_batch(next(batches)))
        history.append({k: float(np.asarray(jax.device_get(v))) for k, v in metrics.items()})
    return trainer, state, history


def _host(tree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


@pytest.mark.parametrize("mode,loss_key", [("dpo", "train/rewards/margins"),
                                           ("reward", "train/reward/margin")])
def test_the_first_pair_step_starts_at_ln2_with_no_margin(start, tmp_path, mode, loss_key):
    """Policy == reference (DPO) and a zero score head (reward) give -log sigmoid(0) = ln 2."""
    _, _, history = _first_steps(_config(mode, start, beta=1.0), str(tmp_path / mode), jax.devices()[:1])
    assert history[0]["train/loss"] == pytest.approx(LN2, abs=1e-6)
    # The policy's log-probs are computed inside the gradient and the reference's outside it:
    # two float32 sums of ~20 log-probs of ~17 nats in all, which may round apart by a few ulps
    # of 17 (2e-6 each); the reward model's zero head scores exactly 0.
    assert history[0][loss_key] == pytest.approx(0.0, abs=1e-5)


def test_lora_dpo_scores_the_reference_with_the_adapters_disabled(start, tmp_path):
    """With LoRA the reference is the base (adapters zeroed), never the trained policy: the
    first step is ln 2 and later steps move the policy away from it (TRL #1311)."""
    config = _config("dpo", start, beta=0.5)
    config.peft.method = "lora"
    config.optimizer.update(lr=1e-2, min_lr=1e-2, warmup_steps=0)
    trainer, state, history = _first_steps(config, str(tmp_path / "lora"), jax.devices()[:1], steps=3)
    assert trainer.reference_params() is None  # no second copy of the model
    assert history[0]["train/loss"] == pytest.approx(LN2, abs=1e-6)
    assert abs(history[-1]["train/rewards/margins"]) > 1e-3
    # The reference's log-probs are the base run's, whatever the adapters learned.
    from lm.align.pairs import sequence_logps, side
    from lm.train.run import Run
    base = Run.from_workdir(start, devices=jax.devices()[:1])
    base_params, _ = base.restore()
    batch = {k: v for k, v in next(pair_training(config, str(tmp_path / "b"), jax.devices()[:1],
                                                 evaluate=False)[1]).items() if k != "prompt_lengths"}
    rows = side(batch, "chosen")
    from flax import nnx
    want = sequence_logps(nnx.merge(base.graphdef, base_params), rows)
    got = sequence_logps(trainer.reference_model(state.params, None), rows)
    policy = sequence_logps(nnx.merge(trainer.graphdef, state.params), rows)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6)
    assert not np.allclose(np.asarray(policy), np.asarray(want), rtol=1e-4)


@pytest.mark.parametrize("mode", ["ppo", "grpo"])
def test_the_first_clipped_update_has_ratio_one_and_nothing_clipped(start, tmp_path, mode, monkeypatch):
    """Under a top-k mask too, where prompt targets outside the top k have log-prob -inf (a
    NaN gradient, which the spike guard would skip, if they entered the ratio)."""
    from lm.align import rewards

    monkeypatch.setitem(rewards.REWARDS, "length", lambda prompt, response: float(len(response)))
    config = _config(mode, start, reward="fn:length", epochs=2, top_k=5, temperature=0.7)
    _, state, history = _first_steps(config, str(tmp_path / mode), jax.devices()[:1])
    assert history[0]["train/skipped"] == 0 and history[0]["train/grad_norm"] > 0
    assert all(np.isfinite(x).all() for x in _host(state.params))
    assert history[0]["train/first_ratio"] == 1.0
    assert history[0]["train/first_clip_fraction"] == 0.0
    # The KL is from the distribution that sampled (top 5 at T 0.7) to the reference at T 0.7:
    # before any update it is the log of 1 / the top 5's mass, positive.
    assert history[0]["rollout/kl"] > 0
    assert math.isfinite(history[0]["train/loss"])


@pytest.mark.parametrize("mode", ["reward", "dpo", "ppo", "grpo"])
def test_one_step_on_the_mesh_equals_one_device(start, tmp_path, mode):
    extra = {"reward": "fn:arithmetic_partial"} if mode in ("ppo", "grpo") else {}
    configs = [_config(mode, start, **extra), _config(mode, start, MESH, **extra)]
    for config in configs:
        # Adam's first update is lr * sign(g) where |g| >> eps: a gradient that is zero up to
        # rounding would flip a whole step. A large eps makes the update proportional to g, so
        # the parameters compare the sharded gradients themselves.
        config.optimizer.eps = 1.0
    one = _first_steps(configs[0], str(tmp_path / "one"), jax.devices()[:1])
    mesh = _first_steps(configs[1], str(tmp_path / "mesh"), jax.devices())
    assert len(mesh[0].mesh.devices.flat) == 8
    for key, value in one[2][0].items():
        if key.endswith(("accuracies", "accuracy")):
            continue  # counts r_chosen > r_rejected, which at the first step tie up to rounding
        assert mesh[2][0][key] == pytest.approx(value, rel=2e-4, abs=1e-5), key
    for a, b in zip(_host(one[1].params), _host(mesh[1].params)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mode", ["ppo", "grpo"])
def test_a_nan_reward_drops_its_row_and_is_counted(start, tmp_path, monkeypatch, mode):
    from lm.align import rewards

    calls = []

    def half_nan(prompt, response):  # every other rollout
        calls.append(prompt)
        return float("nan") if len(calls) % 2 else 1.0
    monkeypatch.setitem(rewards.REWARDS, "half_nan", half_nan)
    _, state, history = _first_steps(_config(mode, start, reward="fn:half_nan"), str(tmp_path / "nan"),
                                     jax.devices()[:1])
    assert history[0]["rollout/bad_rewards"] == 4  # of the 8 rollouts
    assert history[0]["rollout/kl"] == 0.0  # no top-k / top-p: the policy is the reference
    assert history[0]["rollout/reward"] == 1.0  # the mean of the finite ones
    assert all(np.isfinite(x).all() for x in _host(state.params))


def test_a_reward_function_that_raises_is_a_config_error(start, tmp_path, monkeypatch):
    from lm.align import rewards

    def broken(prompt, response):
        raise KeyError("no such field")
    monkeypatch.setitem(rewards.REWARDS, "broken", broken)
    with pytest.raises(ConfigError, match="reward function broken failed on prompt 'Instruction"):
        _first_steps(_config("grpo", start, reward="fn:broken"), str(tmp_path / "raise"), jax.devices()[:1])


def test_a_reward_model_with_another_vocabulary_is_refused(start, tmp_path):
    from lm.align.modes import run_pair_mode

    reward_dir = str(tmp_path / "reward")
    run_pair_mode(_config("reward", start), reward_dir, devices=jax.devices()[:1])
    other = str(tmp_path / "other_vocab")
    shutil.copytree(reward_dir, other)
    saved = json.load(open(os.path.join(other, "config.json")))
    # A run on the shipped SentencePiece vocabulary: another vocabulary, another embedding size.
    saved["data"]["vocab"], saved["model"]["vocab_size"] = "sentencepiece", 0
    json.dump(saved, open(os.path.join(other, "config.json"), "w"))
    with pytest.raises(ConfigError, match="another vocabulary"):
        _first_steps(_config("ppo", start, reward=f"run:{other}"), str(tmp_path / "ppo"), jax.devices()[:1])
    # The reward model itself drives PPO: the first step's rollouts are scored by its head.
    _, _, history = _first_steps(_config("ppo", start, reward=f"run:{reward_dir}"), str(tmp_path / "rm"),
                                 jax.devices()[:1])
    assert math.isfinite(history[0]["rollout/reward"])


def test_identical_and_incomplete_pairs_are_counted_and_a_file_of_them_refused(start, tmp_path):
    good = {"prompt": "What is 2 plus 2?", "chosen": "4", "rejected": "5"}
    rows = [good] * 30 + [{"prompt": "What is 1 plus 1?", "chosen": "2", "rejected": "2"},
                          {"prompt": "What is 3 plus 1?", "chosen": "4"}]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    from lm.align.modes import preference_pairs
    from lm.align.config import align_config
    config = _config("dpo", start, pairs=f"jsonl:{path}")
    pairs, skipped = preference_pairs(align_config(config), "train", 100, 0)
    assert skipped["identical"] == 1 and sum(v for k, v in skipped.items() if k.startswith("missing")) == 1
    assert all(p.chosen != p.rejected for p in pairs)
    path.write_text(json.dumps(rows[-2]) + "\n")
    with pytest.raises(ConfigError, match="pairs.jsonl"):
        preference_pairs(align_config(_config("dpo", start, pairs=f"jsonl:{path}")), "train", 100, 0)


@pytest.mark.slow
def test_a_resumed_ppo_run_equals_the_uninterrupted_one_bitwise(start, tmp_path):
    """Rollouts draw from (seed, step) and the adaptive KL coefficient travels with the data
    position: a run stopped at step 2 and resumed ends where a run of 4 steps ends, bit for bit."""
    from lm.align.modes import fit_and_report

    def run(workdir, steps):
        config = _config("ppo", start, reward="fn:arithmetic_partial", kl_target=0.01, kl_horizon=10)
        config.train.update(steps=steps, checkpoint_every=2)
        fit_and_report(*policy_training(config, workdir, jax.devices()[:1], evaluate=False))

    run(str(tmp_path / "straight"), 4)
    run(str(tmp_path / "resumed"), 2)
    run(str(tmp_path / "resumed"), 4)
    from lm.train.run import Run
    a = Run.from_workdir(str(tmp_path / "straight"), devices=jax.devices()[:1]).restore()[0]
    b = Run.from_workdir(str(tmp_path / "resumed"), devices=jax.devices()[:1]).restore()[0]
    for x, y in zip(_host(a), _host(b)):
        np.testing.assert_array_equal(x, y)
    coefs = [json.loads(line).get("rollout/kl_coef") for line in
             open(os.path.join(tmp_path, "resumed", "metrics.jsonl")) if "rollout/kl_coef" in line]
    assert coefs[-1] != 0.05  # the coefficient moved, and the resumed run carried it on


def test_sampled_pairs_rank_the_starting_models_own_answers(start, tmp_path, monkeypatch):
    from lm.align import rewards
    from lm.align.config import align_config
    from lm.align.sampled import sampled_preference_pairs
    from lm.align.trainer import AlignTrainer

    def distinct_letters(prompt, response):  # any ranking works; the smoke model cannot add
        return float(len(set(response)))
    monkeypatch.setitem(rewards.REWARDS, "distinct_letters", distinct_letters)
    config = _config("dpo", start, pairs="sampled", reward="fn:distinct_letters", group_size=4)
    trainer = AlignTrainer(config, str(tmp_path / "sampled"), jax.devices()[:1])
    pairs, skipped = sampled_preference_pairs(trainer, align_config(config), "train", 16)
    again, _ = sampled_preference_pairs(trainer, align_config(config), "train", 16)
    assert pairs and pairs == again  # drawn from a fixed stream
    assert len(pairs) + skipped.get("no_spread", 0) == 16
    for pair in pairs:
        assert distinct_letters("", pair.chosen) > distinct_letters("", pair.rejected)


def test_rollout_log_probs_use_the_processing_that_sampled_them(start, tmp_path):
    """Sampled at temperature 0.7 within the top 5 tokens, each rollout token's log-prob under
    the forward pass the updates use equals its log-prob under the decoder's own logits with the
    same processing (finite: every sampled token is inside the forward pass's top 5 too)."""
    from flax import nnx

    from lm.align.rollout import processed_token_logps, rollout_rows, sampling_settings
    from lm.infer.decode import generate

    config = _config("ppo", start, temperature=0.7, top_k=5)
    trainer, batches, _, _, _ = policy_training(config, str(tmp_path / "rollout"), jax.devices()[:1],
                                                evaluate=False)
    params = trainer.initial_params()
    prompts = [trainer.train_step.prompts[i] for i in next(batches)["prompt_index"]]
    settings = sampling_settings(trainer.align, trainer.vocab.eos_id, seed=3)
    generation = generate(trainer.graphdef, params, prompts, settings, return_logits=True)
    rows = rollout_rows(prompts, generation.tokens, settings.max_new_tokens, config.data.seq_len,
                        trainer.vocab.eos_id)
    forward = processed_token_logps(nnx.merge(trainer.graphdef, params).forward(rows), rows["targets"],
                                    0.7, 5)
    for row, (prompt, tokens) in enumerate(zip(prompts, generation.tokens)):
        steps = np.arange(len(tokens))
        decoder = processed_token_logps(generation.logits[row:row + 1, steps], np.asarray([tokens]), 0.7, 5)[0]
        at = len(prompt) - 1 + steps  # the positions whose targets are the sampled tokens
        assert np.isfinite(np.asarray(forward)[row, at]).all()
        np.testing.assert_allclose(np.asarray(forward)[row, at], np.asarray(decoder), rtol=1e-4, atol=1e-5)


def test_ppo_with_lora_trains_the_adapters_and_the_value_head_only(start, tmp_path, monkeypatch):
    from lm.align import rewards
    from lm.peft.params import is_peft_path, leaves_with_paths

    monkeypatch.setitem(rewards.REWARDS, "length", lambda prompt, response: float(len(response)))
    config = _config("ppo", start, reward="fn:length")  # rewards that differ: advantages to learn
    config.peft.method = "lora"
    trainer, state, history = _first_steps(config, str(tmp_path / "lora_ppo"), jax.devices()[:1])
    assert trainer.reference_params() is None  # the reference is the base: adapters disabled
    before = dict(leaves_with_paths(jax.device_get(trainer.initial_params())))
    moved = {path for path, leaf in leaves_with_paths(jax.device_get(state.params))
             if not np.array_equal(np.asarray(leaf), np.asarray(before[path]))}
    assert moved and all(is_peft_path(p) or p[0] == "value_head" for p in moved), sorted(moved)[:5]
    assert any(p[0] == "value_head" for p in moved)
    assert history[0]["train/first_ratio"] == 1.0
