"""Instruction tuning of the embedded default on synthetic 2-digit addition.

    python -m launch.main --config=experiments/sft_arithmetic.py --workdir=runs/sft
    python -m launch.main --config=experiments/sft_arithmetic.py --workdir=runs/sft_lora \\
        --config.peft.method=lora
    python -m launch.main --config=experiments/sft_arithmetic.py --workdir=runs/sft \\
        --config.mode=sample --interactive

Starts from the demo's checkpoint (config.init_from = runs/demo), which it pretrains first with
experiments/shakespeare_char.py when runs/demo holds none. Instances read "What is 37 plus 48?"
and answer "85" then EOS; the loss falls on the answer and EOS only. Held-out questions (pairs
never seen in training) are answered greedily before and after: <workdir>/sft_result.json.

Variants: '' (full fine-tuning), 'smoke' (a few steps, for tests).
"""
import ml_collections

from experiments import shakespeare_char
from lm.peft.config import DEFAULT_LORA_TARGETS


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    config = shakespeare_char.get_config()
    config.mode = "sft"
    config.init_from = "runs/demo"       # the pretrained run whose latest checkpoint is the start

    config.sft = ml_collections.ConfigDict()
    config.sft.mixture = "arithmetic"     # 'name[*weight],...' of lm.instruct datasets
    config.sft.train_instances = 7000     # drawn from the mixture (of 7252 distinct training sums)
    config.sft.eval_data = "arithmetic"   # held out: the validation split
    config.sft.eval_instances = 200
    config.sft.pack = False               # several instances per 64-character row
    config.sft.on_overflow = "skip"       # instances longer than the context: skip (counted) | error
    config.sft.max_new_tokens = 8         # greedy answer length for exact match
    config.sft.pretrain_config = "experiments/shakespeare_char.py"  # trains init_from if empty

    # PEFT (lm/peft): none/full (every parameter trains), lora, adapter, prefix, prompt.
    config.peft = ml_collections.ConfigDict()
    config.peft.method = "full"
    config.peft.lora_rank = 8
    config.peft.lora_alpha = 16.0
    config.peft.lora_dropout = 0.0
    config.peft.lora_targets = DEFAULT_LORA_TARGETS  # regex over dense kernel paths: q, k, v, out
    config.peft.adapter_dim = 16
    config.peft.prefix_length = 8
    config.peft.prefix_hidden = 0
    config.peft.prompt_length = 8
    config.peft.prompt_init = "vocab"

    config.data.batch_size = 32
    config.optimizer.lr = 1e-3
    config.optimizer.min_lr = 1e-4
    config.optimizer.warmup_steps = 50
    config.optimizer.weight_decay = 0.0
    config.train.steps = 1500
    config.train.eval_every = 250
    config.train.checkpoint_every = 500
    config.train.log_every = 50
    config.train.sample_tokens = 0        # answers, not free text, are the measure here
    config.eval.tasks = ""
    config.sample.prompt = "What is 37 plus 48?"
    config.sample.max_new_tokens = 8
    config.sample.temperature = 0.0
    config.sample.template = "instruction"  # the question wrapped as in training

    if variant == "smoke":
        config.sft.train_instances = 400
        config.sft.eval_instances = 16
        config.train.steps = 6
        config.train.eval_every = 3
        config.train.checkpoint_every = 3
        config.train.log_every = 3
        config.data.batch_size = 8
        config.data.eval_batches = 2
    elif variant:
        raise ValueError(f"unknown variant {variant!r} of sft_arithmetic; use '' or 'smoke'")
    return config
