"""Position encodings and length extrapolation on the embedded Shakespeare characters.

    python -m launch.sweep --config=experiments/ablations/positions.py --workdir=runs/sweeps/positions
    python -m launch.sweep --config=experiments/ablations/positions.py:full --workdir=...   # accelerator

Every encoding (none = causal attention alone, learned, sinusoidal, RoPE, ALiBi) trains at
context 64 and is evaluated at 64, 128 and 256 on the same validation text. The learned table has
256 rows so that longer contexts run; rows past 64 are never trained, which is the point.

Variants: '' (the CPU recipe, 1500 steps per encoding: ~6 minutes on 2 cores), 'full' (context
256 -> 512 and 1024, the nanoGPT GPU model).
"""
from __future__ import annotations

import os

from experiments import shakespeare_char
from lm.configlib import ConfigError
from lm.fileio import save_figure
from lm.sweep import Eval, Plot, Sweep, grid

ENCODINGS = ["none", "learned", "sinusoidal", "rope", "alibi"]


def _recipe(variant: str):
    config = shakespeare_char.get_config()
    config.train.update(sample_tokens=0, keep_checkpoints=1)
    if variant == "":
        config.train.update(steps=1500, eval_every=1500, checkpoint_every=1500)
        config.model.max_len = 256
        return config, (128, 256)
    config.model.update(num_layers=6, num_heads=6, d_model=384, max_len=1024)
    config.data.update(seq_len=256, batch_size=64, eval_batches=100)
    config.train.update(steps=5000, eval_every=1000, checkpoint_every=1000)
    return config, (512, 1024)


def extrapolation_plot(rows: list[dict], workdir: str, train_len: int, lengths) -> str:
    """Bits per character against evaluation length, one line per encoding."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    all_lengths = [train_len, *lengths]
    for row in rows:
        keys = ["eval/bits_per_token"] + [f"len{n}/eval/bits_per_token" for n in lengths]
        values = [row.get(k) for k in keys]
        if all(isinstance(v, (int, float)) for v in values):
            ax.plot(all_lengths, values, marker="o", label=row["name"])
    ax.axvline(train_len, color="grey", linestyle=":", label=f"training length {train_len}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(all_lengths, [str(n) for n in all_lengths])
    ax.set_xlabel("evaluation context length")
    ax.set_ylabel("validation bits per character")
    ax.set_title("Length extrapolation of position encodings")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, os.path.join(workdir, "extrapolation.png"), dpi=120)
    plt.close(fig)
    return ("## Length extrapolation\n\nEach model trained at context "
            f"{train_len}; evaluated on the same validation split at {', '.join(map(str, all_lengths))}."
            "\n\n![extrapolation](extrapolation.png)\n")


def get_sweep(variant: str = "") -> Sweep:
    if variant not in ("", "full"):
        raise ConfigError(f"unknown variant {variant!r} of the positions sweep; use '' or 'full'")
    base, lengths = _recipe(variant)
    train_len = base.data.seq_len
    return Sweep(
        name="positions" if not variant else f"positions:{variant}",
        description=(f"Position encodings trained at context {train_len} and evaluated at "
                     f"{train_len}, {lengths[0]} and {lengths[1]}: {base.model.num_layers} layers, "
                     f"d_model {base.model.d_model}, {base.train.steps} steps of batch "
                     f"{base.data.batch_size} on the Shakespeare characters. Columns are validation "
                     f"bits per character at each evaluation length."),
        base=base,
        variants=grid({"model.positions": ENCODINGS}),
        evals=[Eval(f"len{n}", {"data.seq_len": n}) for n in lengths],
        columns=["eval/bits_per_token", *[f"len{n}/eval/bits_per_token" for n in lengths], "num_params",
                 "wall_seconds"],
        plots=[Plot(x="model.positions", y="eval/bits_per_token", kind="bar", name="bits_at_train_length",
                    title=f"Validation bits per character at the training length {train_len}")],
        analysis=lambda rows, workdir: extrapolation_plot(rows, workdir, train_len, lengths),
    )
