"""From n-grams to Transformers: statistical, recurrent and attention language models on the same
characters, scored with the same metric and sampled with the same sampler.

    python -m launch.sweep --config=experiments/ablations/lm_evolution.py --workdir=runs/sweeps/lm_evolution
    python -m launch.sweep --config=experiments/ablations/lm_evolution.py:full --workdir=...  # accelerator

  n-gram, n = 2..5   interpolated Kneser-Ney counts (lm/baselines), fitted on the first T tokens
  LSTM               2 layers of 256 units, init std 0.1 (lm/models/lstm.py)
  Transformer        the demo's 4-layer decoder (lm/models/transformer.py)

All see T training tokens: the neural models as steps x batch x context windows, the n-grams as
the first T tokens of the same train split. eval/bits_per_token is validation bits per
character on the trainer's validation windows; samples.md puts the samples side by side.

Variants: '' (T = 10000 x 12 x 64 = 7.7M tokens, more than the 4.55M-token train split, which
the n-grams then count whole: ~15 minutes on 2 cores), 'full' (the nanoGPT GPU
recipe, context 256).
"""
from __future__ import annotations

import json
import os

from experiments import shakespeare_char
from lm.baselines.run import ngram_section
from lm.configlib import ConfigError
from lm.sweep import Plot, Sweep, Variant

ORDERS = (2, 3, 4, 5)


def _recipe(variant: str):
    config = shakespeare_char.get_config()
    config.train.update(sample_tokens=300, keep_checkpoints=1)
    if variant == "":
        config.train.update(steps=10000, eval_every=2500, checkpoint_every=2500)
    else:
        config.model.update(num_layers=6, num_heads=6, d_model=384, max_len=256, dropout=0.2)
        config.data.update(seq_len=256, batch_size=64, eval_batches=200)
        config.train.update(steps=5000, eval_every=1000, checkpoint_every=1000)
    tokens = config.train.steps * config.data.batch_size * config.data.seq_len
    config.ngram = ngram_section(train_tokens=tokens, sample_tokens=300)
    return config


def _variants(variant: str) -> list[Variant]:
    lstm_width = 256 if variant == "" else 1024
    return [Variant(f"{n}-gram", {"ngram.order": n}, runner="ngram") for n in ORDERS] + [
        # An LSTM initialised at the Transformer's std 0.02 sits on the unigram plateau for
        # hundreds of steps; 0.1 leaves it at once (lm/models/lstm.py).
        Variant("lstm", {"model.arch": "lstm", "model.d_model": lstm_width, "model.num_layers": 2,
                         "model.init_std": 0.1}),
        Variant("transformer", {}),
    ]


def _sample_of(workdir: str, row: dict) -> str:
    """The last sample a variant wrote (samples.txt: '=== ... ===' headers, then the text)."""
    path = os.path.join(workdir, row.get("directory", row["name"]), "samples.txt")
    if not os.path.exists(path):
        return ""
    with open(path) as f:
        chunks = f.read().split("=== ")
    return chunks[-1].split("===", 1)[-1].strip() if len(chunks) > 1 else ""


def samples_side_by_side(rows: list[dict], workdir: str) -> str:
    """samples.md: every model's sample from the same prompt, in table order."""
    from lm.sweep.runner import directory_name
    parts = ["# Samples, same prompt and temperature\n"]
    for row in rows:
        text = _sample_of(workdir, {**row, "directory": directory_name(row["name"])})
        parts.append(f"## {row['name']}\n\n```\n{text[:400]}\n```\n")
    from lm.fileio import write_atomically
    write_atomically(os.path.join(workdir, "samples.md"), "\n".join(parts))
    best = {row["name"]: row.get("eval/bits_per_token") for row in rows}
    return ("## Samples\n\nSide by side in [samples.md](samples.md).\n\n"
            f"```\n{json.dumps(best, indent=1)}\n```\n")


def get_sweep(variant: str = "") -> Sweep:
    if variant not in ("", "full"):
        raise ConfigError(f"unknown variant {variant!r} of the lm_evolution sweep; use '' or 'full'")
    base = _recipe(variant)
    return Sweep(
        name="lm_evolution" if not variant else f"lm_evolution:{variant}",
        description=(f"n-gram (n = 2..5, Kneser-Ney), LSTM and Transformer language models at equal "
                     f"training tokens ({base.ngram.train_tokens:,}) on the Shakespeare characters; "
                     f"validation bits per character on the same windows."),
        base=base,
        variants=_variants(variant),
        columns=["eval/bits_per_token", "num_params", "wall_seconds"],
        plots=[Plot(x="name", y="eval/bits_per_token", kind="bar", name="bits_per_char",
                    title="Validation bits per character (lower is better)")],
        analysis=samples_side_by_side,
    )
