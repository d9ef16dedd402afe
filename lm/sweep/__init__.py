"""Ablation sweeps: many variants of one experiment, run resumably, reported as one table.

    python -m launch.sweep --config=experiments/ablations/<name>.py[:<variant>] --workdir=<dir>
"""
from lm.sweep.registry import Runner, get_runner, register_runner
from lm.sweep.runner import SweepOutcome, plan, run_sweep
from lm.sweep.spec import Eval, Plot, Sweep, Variant, grid

__all__ = ["Eval", "Plot", "Runner", "Sweep", "SweepOutcome", "Variant", "get_runner", "grid",
           "plan", "register_runner", "run_sweep"]
