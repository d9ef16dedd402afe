"""A loss-curve PNG from metrics.jsonl, for people who would rather look than read."""
from __future__ import annotations

import os

from lm.fileio import save_figure
from lm.train.metrics import read_metrics


def plot_losses(workdir: str, filename: str = "loss.png") -> str | None:
    """Train and validation loss against step; returns the PNG path (None without matplotlib)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = read_metrics(workdir)
    curves = {key: [(r["step"], r[key]) for r in rows if key in r]
              for key in ("train/loss", "eval/loss")}
    if not any(curves.values()):
        return None
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for key, points in curves.items():
        if points:
            steps, values = zip(*points)
            ax.plot(steps, values, marker="o" if key == "eval/loss" else None,
                    markersize=3, label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats per token)")
    ax.set_title(os.path.basename(os.path.abspath(workdir)))
    ax.grid(alpha=0.3)
    ax.legend()
    path = os.path.join(workdir, filename)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path
