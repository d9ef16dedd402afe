"""RLHF's three steps and their successors on 2-digit addition taught a systematic error.

    python -m launch.main --config=experiments/align_arithmetic.py:dpo --workdir=runs/align_dpo
    python -m launch.sweep --config=experiments/ablations/alignment.py --workdir=runs/sweeps/alignment

Variants (each names config.mode):
  sft     supervised fine-tuning of the demo (runs/demo, pretrained first when missing) on
          'arithmetic_dropped_carry': 80% of the sums that carry are answered with the carry
          dropped (37 plus 48 -> 75), so the SFT model's most likely answer there is wrong
          (a systematic error: random noise would be voted away by greedy decoding)
  reward  a reward model from the SFT run: Bradley-Terry on pairs whose chosen answer is right
          and whose rejected one has the carry dropped or a digit off
  dpo     DPO on the same pairs, the SFT run as the frozen reference
  ppo     PPO against the exact-match reward with a KL penalty to the SFT run and a value head
  grpo    GRPO: 8 samples per question, group-normalised rewards, a k3 KL term
  ppo_rm  PPO against the reward model of 'reward' instead of the exact-match function
Each alignment variant starts from runs/align_sft (trained first with the 'sft' variant when it
holds no checkpoint). Held-out questions are answered greedily and at temperature 1 before and
after: <workdir>/align_result.json. Append '_smoke' to a variant for a few-step version (tests).
"""
import ml_collections

from configs import base
from experiments import sft_arithmetic

SFT_WORKDIR = "runs/align_sft"
REWARD_WORKDIR = "runs/align_reward"
MODES = ("sft", "reward", "dpo", "ppo", "grpo", "ppo_rm")


def get_config(variant: str = "dpo") -> ml_collections.ConfigDict:
    name, smoke = variant.removesuffix("_smoke"), variant.endswith("_smoke")
    if name not in MODES:
        raise ValueError(f"unknown variant {variant!r} of align_arithmetic; use one of "
                         f"{', '.join(MODES)}, each optionally with '_smoke'")
    config = sft_arithmetic.get_config("smoke" if smoke else "")
    config.sft.update(mixture="arithmetic_dropped_carry", eval_data="arithmetic")
    if name == "sft":
        return config
    mode = "ppo" if name == "ppo_rm" else name
    config.mode = mode
    config.init_from = SFT_WORKDIR
    config.align = base.section("align", start_config=f"experiments/align_arithmetic.py:sft{'_smoke' * smoke}",
                                max_new_tokens=4, eval_instances=200)
    config.optimizer.update(lr=1e-4, min_lr=1e-5, warmup_steps=10)
    config.train.update(steps=200, eval_every=50, checkpoint_every=100, log_every=10)
    if mode == "dpo":
        # beta 1 and a small learning rate: DPO pushes the rejected answers down without bound
        # and the mass drifts to answers nobody chose; at beta 0.1 and lr 1e-4 greedy exact
        # match fell from 44% to 35% (KL 3.5), at beta 1 and lr 1e-4 it rose to 57% only
        # (docs/results/ablations/alignment/results.md).
        config.align.beta = 1.0
        config.optimizer.update(lr=3e-5, min_lr=3e-6)
        config.train.update(steps=600, eval_every=100, checkpoint_every=200)
    if mode == "reward":
        config.optimizer.update(lr=3e-4, min_lr=3e-5)
    if mode in ("ppo", "grpo"):
        config.optimizer.update(lr=3e-5, min_lr=3e-6)
        config.train.update(steps=150, eval_every=50, checkpoint_every=50, log_every=5)
    if mode == "grpo":
        config.data.batch_size = 64  # 8 questions x 8 samples
    if name == "ppo_rm":
        config.align.update(reward=f"run:{REWARD_WORKDIR}",
                            reward_config=f"experiments/align_arithmetic.py:reward{'_smoke' * smoke}")
    if smoke:
        config.init_from = SFT_WORKDIR + "_smoke"
        config.align.update(train_pairs=64, eval_pairs=16, eval_instances=16, group_size=4)
        config.train.update(steps=4, eval_every=2, checkpoint_every=2, log_every=2)
        config.data.batch_size = 8
    return config
