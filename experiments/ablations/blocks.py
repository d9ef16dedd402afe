"""Transformer block choices on the embedded Shakespeare character corpus, one factor at a time.

    python -m launch.sweep --config=experiments/ablations/blocks.py --workdir=runs/sweeps/blocks
    python -m launch.sweep --config=experiments/ablations/blocks.py:full --workdir=...   # accelerator

From the baseline (GELU MLP, LayerNorm, serial pre-norm block, multi-head attention) each variant
changes one thing: the MLP (SwiGLU, GeGLU), the norm (RMSNorm), the block (PaLM's parallel
attention + MLP) or the key/value heads (1 = multi-query, 2 = grouped-query). Gated MLPs have
three matrices instead of two, so their d_ff is 2/3 of 4 * d_model (rounded to a multiple of 8)
to keep parameter counts comparable.

Variants: '' (the CPU recipe with 1500 steps: the 7 runs take about 8 minutes on 2 idle cores,
12 min 49 s measured with the cores shared; docs/results/ablations/blocks/),
'full' (nanoGPT's GPU Shakespeare recipe: 6 layers, 6 heads, d_model 384, context 256,
batch 64, dropout 0.2, 5000 steps).
"""
from __future__ import annotations

from experiments import shakespeare_char
from lm.configlib import ConfigError
from lm.sweep import Plot, Sweep, Variant


def gated_d_ff(d_model: int) -> int:
    """The hidden width of a gated MLP with the parameters of a 4 * d_model ungated one."""
    return 8 * round(2 * 4 * d_model / 3 / 8)


def _cpu_recipe():
    config = shakespeare_char.get_config()
    config.train.steps = 1500
    config.train.eval_every = 1500
    config.train.checkpoint_every = 1500
    config.train.keep_checkpoints = 1
    config.train.sample_tokens = 0
    return config


def _accelerator_recipe():
    config = shakespeare_char.get_config()
    config.model.update(num_layers=6, num_heads=6, d_model=384, max_len=256, dropout=0.2)
    config.data.seq_len = 256
    config.data.batch_size = 64
    config.data.eval_batches = 200
    config.train.update(steps=5000, eval_every=500, checkpoint_every=1000, keep_checkpoints=1,
                        sample_tokens=200)
    return config


def one_factor_variants(d_model: int) -> list[Variant]:
    gated = gated_d_ff(d_model)
    return [
        Variant("baseline", {}),
        Variant("mlp=swiglu", {"model.mlp": "swiglu", "model.d_ff": gated}),
        Variant("mlp=geglu", {"model.mlp": "geglu", "model.d_ff": gated}),
        Variant("norm=rmsnorm", {"model.norm": "rmsnorm"}),
        Variant("block=parallel", {"model.block": "parallel"}),
        Variant("num_kv_heads=1", {"model.num_kv_heads": 1}),  # multi-query
        Variant("num_kv_heads=2", {"model.num_kv_heads": 2}),  # grouped-query
    ]


def get_sweep(variant: str = "") -> Sweep:
    if variant == "":
        base = _cpu_recipe()
    elif variant == "full":
        base = _accelerator_recipe()
    else:
        raise ConfigError(f"unknown variant {variant!r} of the blocks sweep; use '' or 'full'")
    description = (
        f"Transformer block choices, one at a time from the baseline (GELU MLP, LayerNorm, serial "
        f"block, multi-head attention): {base.model.num_layers} layers, d_model "
        f"{base.model.d_model}, {base.model.num_heads} heads, context {base.data.seq_len}, batch "
        f"{base.data.batch_size}, {base.train.steps} steps on the Shakespeare characters. "
        f"Gated MLPs use d_ff={gated_d_ff(base.model.d_model)} (d_ff 0 = 4 * d_model = "
        f"{4 * base.model.d_model}); num_kv_heads 0 = multi-head, 1 = multi-query, "
        f"2 = grouped-query. eval/bits_per_token is validation bits per character.")
    return Sweep(
        name="blocks" if not variant else f"blocks:{variant}",
        description=description,
        base=base,
        variants=one_factor_variants(base.model.d_model),
        columns=["eval/bits_per_token", "eval/loss", "num_params", "train/tokens_per_sec",
                 "wall_seconds"],
        plots=[Plot(x="name", y="eval/bits_per_token", kind="bar", name="bits_per_token",
                    title="Validation bits per character (lower is better)")],
    )
