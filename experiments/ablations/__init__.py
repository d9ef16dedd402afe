"""Ablation sweeps: each file defines get_sweep(variant) -> lm.sweep.Sweep (python -m launch.sweep)."""
