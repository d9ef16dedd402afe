"""Parameter-efficient fine-tuning against full fine-tuning, on the same instruction task.

    python -m launch.sweep --config=experiments/ablations/peft.py --workdir=runs/sweeps/peft

Every variant starts from the demo's checkpoint (runs/demo, pretrained first when missing) and
instruction-tunes it on synthetic 2-digit addition (experiments/sft_arithmetic.py) for the same
number of steps: full fine-tuning, LoRA (rank 8 on the attention projections, and on the
attention and MLP projections), bottleneck
adapters (width 16 after attention and MLP), prefix tuning (8 key/value prefixes per layer,
reparameterized by an MLP) and prompt tuning (8 soft-prompt vectors). Each method gets its usual
learning rate (small updates for full fine-tuning, large ones for the few prompt parameters).
Reported: trainable parameters, optimizer-state bytes, step time, held-out exact match before
and after. Results: docs/results/ablations/peft/.
"""
from __future__ import annotations

from experiments import sft_arithmetic
from lm.configlib import ConfigError
from lm.sweep import Plot, Sweep, Variant

METHODS = [  # (variant, method, learning rate, extra overrides)
    ("full", "full", 1e-3, {}),
    ("lora", "lora", 3e-3, {"peft.lora_rank": 8, "peft.lora_alpha": 16.0}),
    ("lora_mlp", "lora", 1e-2, {"peft.lora_rank": 8, "peft.lora_alpha": 16.0,
                                "peft.lora_targets": r".*(attention|mlp)/.*kernel"}),
    ("adapter", "adapter", 3e-3, {"peft.adapter_dim": 16}),
    ("prefix", "prefix", 1e-2, {"peft.prefix_length": 8, "peft.prefix_hidden": 64}),
    ("prompt", "prompt", 3e-2, {"peft.prompt_length": 8, "data.seq_len": 56}),  # 8 + 56 positions fit max_len 64
]


def get_sweep(variant: str = "") -> Sweep:
    if variant:
        raise ConfigError(f"unknown variant {variant!r} of the peft sweep; use ''")
    base = sft_arithmetic.get_config()
    base.train.keep_checkpoints = 1
    variants = [Variant(name, {"peft.method": method, "optimizer.lr": lr, "optimizer.min_lr": lr / 10,
                               **extra}, runner="sft")
                for name, method, lr, extra in METHODS]
    description = (
        f"PEFT methods against full fine-tuning: the demo model ({base.model.num_layers} layers, "
        f"d_model {base.model.d_model}, pretrained on the Shakespeare characters) instruction-tuned "
        f"on synthetic 2-digit addition for {base.train.steps} steps of {base.data.batch_size} "
        f"instances; exact match on {base.sft.eval_instances} held-out questions.")
    return Sweep(
        name="peft",
        description=description,
        base=base,
        variants=variants,
        columns=["peft/trainable_params", "peft/optimizer_state_bytes", "sft/step_ms",
                 "sft/before/exact_match", "sft/after/exact_match", "eval/loss", "wall_seconds"],
        plots=[Plot(x="name", y="sft/after/exact_match", kind="bar", name="exact_match",
                    title="Held-out exact match after fine-tuning (%)"),
               Plot(x="name", y="peft/trainable_params", kind="bar", logy=True, name="trainable_params",
                    title="Trainable parameters")],
    )
