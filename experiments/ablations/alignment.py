"""RLHF's three steps (SFT, a reward model, PPO) and DPO and GRPO from the same SFT model.

    python -m launch.sweep --config=experiments/ablations/alignment.py --workdir=runs/sweeps/alignment

The SFT model learns 2-digit addition with a systematic error: 80% of the sums that carry are
answered with the carry dropped (experiments/align_arithmetic.py), so its greedy answer to most
carrying questions is wrong. Every method then starts from it (the variants run in order; each
names the SFT run as '{sweep}/sft'):
  reward       Bradley-Terry reward model on pairs (right answer over a dropped carry or a
               digit off); held-out pair accuracy
  dpo          DPO on the same pairs (beta 1, lr 3e-5), the SFT model as the reference
  dpo_rpo      DPO at beta 0.1 plus the chosen answers' NLL (RPO, Pang et al. 2024)
  ppo          PPO against the exact-match reward, KL penalty to the SFT model, value head
  ppo_rm       PPO against the reward model of 'reward' (RLHF's third step as InstructGPT runs it)
  ppo_rm_kl0   the same with a KL coefficient near zero: free to exploit the reward model
  grpo         GRPO, 8 samples per question, exact-match reward, k3 KL term
Reported on 200 held-out questions: exact match greedy and sampled at temperature 1, the mean
reward of the sampled answers and the KL from the SFT model. Results:
docs/results/ablations/alignment/.
"""
from __future__ import annotations

from experiments import align_arithmetic
from lm.configlib import ConfigError
from lm.sweep import Plot, Sweep, Variant

SFT = "{sweep}/sft"
SFT_RECIPE = {"mode": "sft", "init_from": "runs/demo", "optimizer.lr": 1e-3, "optimizer.min_lr": 1e-4,
              "optimizer.warmup_steps": 50, "train.steps": 1500, "train.eval_every": 250,
              "train.checkpoint_every": 500, "train.log_every": 50}
COMPARED = ("dpo", "dpo_rpo", "ppo", "ppo_rm", "ppo_rm_kl0", "grpo")


def _align(name: str, recipe: str = "", **overrides) -> Variant:
    """A variant of align_arithmetic's ``recipe`` (default: ``name``) from the sweep's SFT run."""
    config = align_arithmetic.get_config(recipe or name)
    keys = {"mode": config.mode, "init_from": SFT, "optimizer.lr": config.optimizer.lr,
            "optimizer.min_lr": config.optimizer.min_lr, "train.steps": config.train.steps,
            "train.eval_every": config.train.eval_every,
            "train.checkpoint_every": config.train.checkpoint_every,
            "train.log_every": config.train.log_every, "data.batch_size": config.data.batch_size,
            "align.beta": config.align.beta}
    return Variant(name, {**keys, **overrides}, runner=config.mode)


def get_sweep(variant: str = "") -> Sweep:
    if variant:
        raise ConfigError(f"unknown variant {variant!r} of the alignment sweep; use ''")
    base = align_arithmetic.get_config("dpo")
    base.train.keep_checkpoints = 1
    base.align.update(start_config="experiments/align_arithmetic.py:sft",
                      reward_config="experiments/align_arithmetic.py:reward")
    variants = [
        Variant("sft", SFT_RECIPE, runner="sft"),
        _align("reward"),
        _align("dpo"),
        _align("dpo_rpo", "dpo", **{"align.beta": 0.1, "align.rpo_alpha": 1.0, "train.steps": 200}),
        _align("ppo"),
        _align("ppo_rm", **{"align.reward": "run:{sweep}/reward"}),
        _align("ppo_rm_kl0", "ppo_rm", **{"align.reward": "run:{sweep}/reward", "align.kl_coef": 1e-4}),
        _align("grpo"),
    ]
    return Sweep(
        name="alignment",
        description=(
            "Alignment tuning from one SFT model (the demo model fine-tuned on 2-digit addition "
            "whose carrying sums are answered with the carry dropped 80% of the time): a reward "
            "model, DPO, PPO (exact-match reward or the reward model) and GRPO. Exact match on "
            f"{base.align.eval_instances} held-out questions, greedy and sampled at temperature 1; "
            "reward: the run's own reward of the sampled answers (exact match, 0 or 1, except "
            "the ppo_rm rows: the reward model's score); KL: from the SFT model, on the sampled "
            "answers."),
        base=base,
        variants=variants,
        columns=["sft/after/exact_match", "eval/reward/accuracy", "align/before/exact_match",
                 "align/after/exact_match", "align/after/sampled_exact_match", "align/after/reward",
                 "align/after/kl", "wall_seconds"],
        plots=[Plot(x="name", y="align/after/exact_match", kind="bar", name="exact_match",
                    title="Held-out greedy exact match after alignment (%)")],
        analysis=analysis,
    )


def analysis(rows: list[dict], workdir: str) -> str:
    """Each method against the SFT model it started from, and whether it met +15 points."""
    lines = ["## Against the SFT model", "",
             "| method | greedy EM | sampled EM | reward | KL to SFT | greedy gain | +15 points |",
             "|---|---|---|---|---|---|---|"]
    compared = [row for row in rows if row.get("name") in COMPARED and row.get("status") == "ok"
                and row.get("align/after/exact_match") is not None]
    if compared:
        start = compared[0]  # every method answers for the same SFT model before it trains
        lines.append(f"| SFT (start) | {start['align/before/exact_match']:.1f} | "
                     f"{start['align/before/sampled_exact_match']:.1f} | "
                     f"{start['align/before/reward']:.3f} | 0 | | |")
    for row in compared:
        gain = row["align/after/exact_match"] - row["align/before/exact_match"]
        lines.append(f"| {row['name']} | {row['align/after/exact_match']:.1f} | "
                     f"{row['align/after/sampled_exact_match']:.1f} | {row['align/after/reward']:.3f} | "
                     f"{row['align/after/kl']:.3f} | {gain:+.1f} | {'yes' if gain >= 15 else 'no'} |")
    if compared and plot_curves(compared, workdir):
        lines += ["", "![Held-out greedy exact match during training](exact_match_by_step.png)"]
    return "\n".join(lines) + "\n"


def plot_curves(rows: list[dict], workdir: str) -> bool:
    """exact_match_by_step.png: each method's held-out greedy exact match at step 0, at every
    evaluation (its metrics.jsonl) and at the end; False when no run left its metrics."""
    import json
    import os

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    for row in rows:
        path = os.path.join(workdir, row["directory"], "metrics.jsonl")
        if not os.path.exists(path):
            continue
        with open(path) as f:
            points = [(0, row["align/before/exact_match"])] + [
                (r["step"], r["align/exact_match"]) for r in map(json.loads, f) if "align/exact_match" in r]
        last = max(step for step, _ in points)
        steps = row.get("train.steps") or last
        points.append((max(steps, last), row["align/after/exact_match"]))
        axes.plot(*zip(*points), marker="o", label=row["name"])
    if not axes.lines:
        plt.close(figure)
        return False
    axes.set(xlabel="train step (rollout batch for ppo / grpo)", ylabel="greedy exact match (%)",
             title="Held-out greedy exact match during training")
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(os.path.join(workdir, "exact_match_by_step.png"), dpi=110)
    plt.close(figure)
    return True
