"""Train-step throughput of lm (JAX) against the PyTorch peer, alternated on the same machine.

    python benchmarks/compare_cpu.py [--rounds=3] [--lm_python=...] [--torch_python=...]

Each round runs both benchmarks as subprocesses from the repository root, one after the other,
and the order flips every round (lm first, then torch first, ...) so that slow drift in the load
of a shared machine falls on both sides. Each benchmark reports the best of its timed windows;
this script prints every round and the medians over rounds:

    lm:    python -m launch.bench --config=experiments/shakespeare_char.py --steps=S --repeats=R
    torch: python benchmarks/torch_reference.py --mode=bench --steps=S --repeats=R

The ratio is lm tokens/s over torch tokens/s (above 1: lm is faster).
"""
from __future__ import annotations

import argparse
import pathlib
import re
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAST_LINE = re.compile(r"^tokens_per_sec=([0-9.]+)")


def run(cmd: list[str]) -> float:
    """Runs ``cmd`` from the repository root; tokens/s from its last ``tokens_per_sec=`` line."""
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if LAST_LINE.match(line)]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"benchmark failed (exit {proc.returncode}): {' '.join(cmd)}")
    return float(LAST_LINE.match(lines[-1]).group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60, help="timed steps per window (both)")
    parser.add_argument("--repeats", type=int, default=3, help="timed windows; best counts (both)")
    parser.add_argument("--lm_python", default=".venv/bin/python")
    parser.add_argument("--torch_python", default="/tmp/torchvenv/bin/python")
    parser.add_argument("--config", default="experiments/shakespeare_char.py")
    args = parser.parse_args()

    commands = {
        "lm": [args.lm_python, "-m", "launch.bench", f"--config={args.config}",
               f"--steps={args.steps}", f"--repeats={args.repeats}"],
        "torch": [args.torch_python, "benchmarks/torch_reference.py", "--mode=bench",
                  f"--steps={args.steps}", f"--repeats={args.repeats}"],
    }
    results = {"lm": [], "torch": []}
    print(f"{'round':>5} {'order':>9} {'lm tok/s':>10} {'torch tok/s':>12} {'lm/torch':>9}")
    for round_index in range(args.rounds):
        order = ("lm", "torch") if round_index % 2 == 0 else ("torch", "lm")
        for name in order:
            results[name].append(run(commands[name]))
        lm, torch = results["lm"][-1], results["torch"][-1]
        print(f"{round_index + 1:>5} {','.join(order):>9} {lm:>10.0f} {torch:>12.0f} "
              f"{lm / torch:>9.3f}", flush=True)
    ratios = [a / b for a, b in zip(results["lm"], results["torch"])]
    lm_med, torch_med = statistics.median(results["lm"]), statistics.median(results["torch"])
    print(f"{'median':>5} {'':>9} {lm_med:>10.0f} {torch_med:>12.0f} "
          f"{statistics.median(ratios):>9.3f}")
    print(f"date={time.strftime('%Y-%m-%d')} rounds={args.rounds} lm_tokens_per_sec={lm_med:.0f} "
          f"torch_tokens_per_sec={torch_med:.0f} ratio_lm_over_torch={statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
