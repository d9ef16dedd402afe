"""Scaling with model size on the embedded Shakespeare characters: 5 sizes at a fixed number of
training tokens, fitted with L(N) = a * N^(-alpha) + c, and a compute-matched (iso-FLOP) sweep
whose best size gives the tokens-per-parameter optimum (Chinchilla's approach 2, in miniature).

    python -m launch.sweep --config=experiments/ablations/scaling.py --workdir=runs/sweeps/scaling
    python -m launch.sweep --config=experiments/ablations/scaling.py:full --workdir=...   # accelerator

N counts every parameter (embeddings included: at these sizes they are a visible share). The
compute of a run is 6 * N * tokens; the iso-compute budget is the 4th size's 2400 steps, which
puts the optimum inside the sizes tried (at a quarter of it, the smallest size was best).
Variants: '' (~19 minutes on 2 cores), 'full' (sizes to 25M parameters and 20x the tokens).
"""
from __future__ import annotations

import os

import numpy as np

from experiments import shakespeare_char
from lm.configlib import ConfigError
from lm.fileio import save_figure
from lm.sweep import Sweep, Variant
from lm.sweep.scaling import fit_power_law, optimum_by_parabola

# (layers, d_model, heads)
SIZES = {"": [(2, 32, 2), (2, 64, 4), (3, 96, 4), (4, 128, 4), (4, 192, 6)],
         "full": [(2, 64, 4), (4, 128, 4), (6, 192, 6), (8, 256, 8), (8, 384, 8), (12, 512, 8)]}
FIXED_STEPS = {"": 1000, "full": 20000}
# The iso-compute budget: the 4th size trained for this many steps.
ISO_STEPS = {"": 2400, "full": 10000}


def approximate_params(layers: int, d_model: int, vocab: int = 87, max_len: int = 64) -> int:
    """Blocks (12 d^2 per layer: attention 4 d^2, MLP 8 d^2) + embeddings + norms."""
    return layers * (12 * d_model ** 2 + 4 * d_model) + (vocab + max_len) * d_model + 2 * d_model


def _size_overrides(layers, d_model, heads) -> dict:
    return {"model.num_layers": layers, "model.d_model": d_model, "model.num_heads": heads}


def _variants(variant: str, tokens_per_step: int) -> list[Variant]:
    sizes = SIZES[variant]
    fixed = [Variant(f"tokens/d={d}", {**_size_overrides(*size), "train.steps": FIXED_STEPS[variant]})
             for size in sizes for d in [size[1]]]
    reference = approximate_params(*sizes[3][:2])
    budget = 6 * reference * tokens_per_step * ISO_STEPS[variant]
    iso = []
    for size in sizes:
        steps = int(round(budget / (6 * approximate_params(*size[:2]) * tokens_per_step)))
        iso.append(Variant(f"compute/d={size[1]}", {**_size_overrides(*size), "train.steps": steps}))
    return fixed + iso


def _rows(rows, prefix):
    return [r for r in rows if r["name"].startswith(prefix) and isinstance(r.get("eval/loss"), float)]


def scaling_analysis(rows: list[dict], workdir: str, tokens_per_step: int) -> str:
    """Fits the fixed-token losses, finds the iso-compute optimum, draws both."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fixed, iso = _rows(rows, "tokens/"), _rows(rows, "compute/")
    lines = ["## Scaling fit", ""]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    if len(fixed) >= 3:
        n = np.array([r["num_params"] for r in fixed], float)
        loss = np.array([r["eval/loss"] for r in fixed])
        law = fit_power_law(n, loss)
        grid = np.geomspace(n.min(), n.max(), 100)
        left.loglog(n, loss, "o", label="runs")
        left.loglog(grid, law(grid), "-", label=f"{law.a:.3g} N^-{law.alpha:.3f} + {law.c:.3f}")
        lines += [f"Fixed tokens ({fixed[0]['train.steps'] * tokens_per_step:,} per run): "
                  f"L(N) = {law.a:.4g} * N^(-{law.alpha:.4f}) + {law.c:.4f} nats "
                  f"(rmse {law.rmse:.4f}); **alpha = {law.alpha:.3f}**.", ""]
    left.set(xlabel="parameters N", ylabel="validation loss (nats/char)", title="Fixed training tokens")
    left.legend(fontsize=8)
    if len(iso) >= 3:
        n = np.array([r["num_params"] for r in iso], float)
        loss = np.array([r["eval/loss"] for r in iso])
        tokens = np.array([r["train.steps"] * tokens_per_step for r in iso], float)
        best = optimum_by_parabola(n, loss)
        compute = float(np.median(6 * n * tokens))
        best_tokens = compute / (6 * best)
        right.semilogx(n, loss, "o-", label=f"C = {compute:.3g} FLOPs")
        right.axvline(best, color="grey", linestyle=":", label=f"optimum N = {best:,.0f}")
        at_edge = np.isclose(best, n.min(), rtol=1e-6) or np.isclose(best, n.max(), rtol=1e-6)
        if not at_edge:
            lines += [f"Compute-matched (C = {compute:.3g} FLOPs): the parabola in log N has its "
                      f"minimum at N = {best:,.0f} parameters, trained on {best_tokens:,.0f} tokens: "
                      f"**{best_tokens / best:.1f} tokens per parameter** (Chinchilla: ~20).", ""]
        else:
            side = "smallest" if np.isclose(best, n.min(), rtol=1e-6) else "largest"
            lines += [f"Compute-matched (C = {compute:.3g} FLOPs): the loss is lowest at the {side} "
                      f"size (N = {best:,.0f}, {best_tokens / best:.1f} tokens per parameter), so the "
                      f"optimum lies outside the sizes tried; widen the sizes or change the budget.", ""]
    right.set(xlabel="parameters N", ylabel="validation loss (nats/char)", title="Equal compute")
    right.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, os.path.join(workdir, "scaling.png"), dpi=120)
    plt.close(fig)
    return "\n".join(lines + ["![scaling](scaling.png)", ""])


def get_sweep(variant: str = "") -> Sweep:
    if variant not in SIZES:
        raise ConfigError(f"unknown variant {variant!r} of the scaling sweep; use '' or 'full'")
    base = shakespeare_char.get_config()
    base.optimizer.warmup_steps = 50
    base.train.update(sample_tokens=0, keep_checkpoints=1, eval_every=10 ** 6, checkpoint_every=10 ** 6)
    if variant == "full":
        base.data.update(seq_len=256, batch_size=64, eval_batches=100)
        base.model.max_len = 256
    tokens_per_step = base.data.batch_size * base.data.seq_len
    return Sweep(
        name="scaling" if not variant else f"scaling:{variant}",
        description=(f"Model size at fixed tokens ({FIXED_STEPS[variant]} steps of {tokens_per_step} "
                     f"tokens) and at equal compute (6 N D fixed at the 4th size's "
                     f"{ISO_STEPS[variant]} steps), on the Shakespeare characters."),
        base=base,
        variants=_variants(variant, tokens_per_step),
        columns=["eval/loss", "eval/bits_per_token", "num_params", "train.steps", "wall_seconds"],
        analysis=lambda rows, workdir: scaling_analysis(rows, workdir, tokens_per_step),
    )
