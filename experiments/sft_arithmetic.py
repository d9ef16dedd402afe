"""Instruction tuning of the embedded default on synthetic 2-digit addition.

    python -m launch.main --config=experiments/sft_arithmetic.py --workdir=runs/sft
    python -m launch.main --config=experiments/sft_arithmetic.py --workdir=runs/sft_lora \\
        --config.peft.method=lora
    python -m launch.main --config=experiments/sft_arithmetic.py --workdir=runs/sft \\
        --config.mode=sample --interactive

Starts from the demo's checkpoint (config.init_from = runs/demo). When runs/demo holds none, it
first pretrains it with experiments/shakespeare_char.py (config.sft.pretrain_config; the full
2000-step demo, announced before it starts; set it to '' to refuse instead). Instances read
"What is 37 plus 48?" and answer "85" then EOS; the loss falls on the answer and EOS only.
Held-out questions (pairs never seen in training) are answered greedily before and after:
<workdir>/sft_result.json. The demo's model and data come with it; only what differs is here.

Variants: '' (full fine-tuning), 'smoke' (a few steps, for tests).
"""
import ml_collections

from configs import base
from experiments import shakespeare_char


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    config = shakespeare_char.get_config()
    config.mode = "sft"
    config.init_from = "runs/demo"       # the pretrained run whose latest checkpoint is the start
    # 7000 of the 7252 distinct training sums; 8 greedy answer tokens for exact match.
    config.sft = base.section("sft", train_instances=7000, max_new_tokens=8,
                              pretrain_config="experiments/shakespeare_char.py")
    config.peft.method = "full"          # every parameter trains; lora/adapter/prefix/prompt
    config.data.batch_size = 32
    config.optimizer.update(warmup_steps=50, weight_decay=0.0)
    # Answers, not free text, are the measure here: no training samples, no eval tasks.
    config.train.update(steps=1500, eval_every=250, checkpoint_every=500, sample_tokens=0)
    config.eval.tasks = ""
    # The question wrapped as in training, answered greedily.
    config.sample.update(prompt="What is 37 plus 48?", max_new_tokens=8, temperature=0.0,
                         template="instruction")

    if variant == "smoke":
        config.sft.update(train_instances=400, eval_instances=16)
        config.train.update(steps=6, eval_every=3, checkpoint_every=3, log_every=3)
        config.data.update(batch_size=8, eval_batches=2)
    elif variant:
        raise ValueError(f"unknown variant {variant!r} of sft_arithmetic; use '' or 'smoke'")
    return config
