"""Causal decoder vs prefix decoder vs encoder-decoder (the T5 paper's Table 2, at small scale).

    python -m launch.sweep --config=experiments/ablations/architectures.py --workdir=runs/sweeps/architectures
    python -m launch.sweep --config=experiments/ablations/architectures.py:full --workdir=...  # accelerator

The task is built from the corpus: each 65-character validation window is cut in half, and a
model reads the first 32 characters (the prefix) and is scored on the next 33 (the target),
in bits per target character (``data.eval_objective = 'prefix_lm'``). Each architecture trains
with the objectives that fit it, on the same windows for the same number of steps. As in the
T5 paper, a decoder-only model of L layers has P parameters and costs M per example; an
encoder-decoder of L + L layers has about 2P parameters at the same cost M (each token passes
through L layers), and one of L/2 + L/2 layers has about P parameters at cost M/2:

  causal decoder          causal LM (every next character)  P, M    causal attention
  prefix decoder          prefix LM (loss on the target)     P, M    bidirectional over the prefix
  encoder-decoder 4+4     prefix LM (prefix in, target out)  2P, M
  encoder-decoder 2+2     prefix LM                          P, M/2
  prefix decoder          span corruption (T5 denoising), then scored on the prefix task
  encoder-decoder 2+2     span corruption

'own/' columns score each model on its own training objective (span corruption: bits per
target token, sentinels included). Denoising-trained models are not fine-tuned on the prefix
task here (T5 fine-tunes), so their prefix-task column measures transfer without it.

Variants: '' (1500 steps each, ~8 minutes on 2 cores), 'full' (a 12-layer, d_model 512 model).
"""
from __future__ import annotations

from experiments import shakespeare_char
from lm.configlib import ConfigError
from lm.sweep import Eval, Plot, Sweep, Variant


def _recipe(variant: str):
    config = shakespeare_char.get_config()
    config.data.eval_objective = "prefix_lm"
    config.train.update(sample_tokens=0, keep_checkpoints=1)
    if variant == "":
        # Decoder-only span corruption reads input ++ target: 65 - 10 + 3 + 10 + 3 - 1 = 70 positions.
        config.model.max_len = 128
        config.train.update(steps=1500, eval_every=1500, checkpoint_every=1500)
    else:
        config.model.update(num_layers=12, num_heads=8, d_model=512, max_len=512)
        config.data.update(seq_len=256, batch_size=64, eval_batches=100)
        config.train.update(steps=10000, eval_every=2000, checkpoint_every=2000)
    return config


def _variants(layers: int) -> list[Variant]:
    same = {"model.num_layers": layers, "model.num_encoder_layers": layers}
    half = {"model.num_layers": layers // 2, "model.num_encoder_layers": layers // 2}
    return [
        Variant("causal_decoder/causal_lm", {"model.arch": "decoder", "data.objective": "causal_lm"}),
        Variant("prefix_decoder/prefix_lm", {"model.arch": "prefix_decoder", "data.objective": "prefix_lm"}),
        Variant("encoder_decoder/prefix_lm", {"model.arch": "encoder_decoder", "data.objective": "prefix_lm",
                                              **half}),
        Variant("encoder_decoder_2x/prefix_lm", {"model.arch": "encoder_decoder",
                                                 "data.objective": "prefix_lm", **same}),
        Variant("prefix_decoder/span_corruption", {"model.arch": "prefix_decoder",
                                                   "data.objective": "span_corruption"}),
        Variant("encoder_decoder/span_corruption", {"model.arch": "encoder_decoder",
                                                    "data.objective": "span_corruption", **half}),
    ]


def get_sweep(variant: str = "") -> Sweep:
    if variant not in ("", "full"):
        raise ConfigError(f"unknown variant {variant!r} of the architectures sweep; use '' or 'full'")
    base = _recipe(variant)
    return Sweep(
        name="architectures" if not variant else f"architectures:{variant}",
        description=(f"Architectures and objectives: decoders of {base.model.num_layers} layers, "
                     f"encoder-decoders of {base.model.num_layers // 2} + {base.model.num_layers // 2} "
                     f"(equal parameters, half the compute) and {base.model.num_layers} + "
                     f"{base.model.num_layers} (encoder_decoder_2x: equal compute, twice the parameters), "
                     f"d_model {base.model.d_model}, {base.train.steps} steps of {base.data.batch_size} "
                     f"windows of {base.data.seq_len + 1} characters. eval/bits_per_token: bits per "
                     f"target character on the prefix-to-target task (second half of each validation "
                     f"window given the first); own/: the model's training objective."),
        base=base,
        variants=_variants(base.model.num_layers),
        evals=[Eval("own", {"data.eval_objective": ""})],
        columns=["eval/bits_per_token", "own/eval/bits_per_token", "num_params", "train/tokens_per_sec",
                 "wall_seconds"],
        plots=[Plot(x="name", y="eval/bits_per_token", kind="bar", name="prefix_task_bits",
                    title="Bits per target character on the prefix-to-target task")],
    )
