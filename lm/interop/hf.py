"""Hugging Face Llama interoperability from the command line:

  python -m lm.interop.hf export --workdir=RUN --out=DIR [--step=N] [--overwrite]
  python -m lm.interop.hf inspect --hf_dir=DIR

``export`` writes a training run's checkpoint as a LlamaForCausalLM folder (config.json,
model.safetensors); ``inspect`` imports a Hugging Face folder and prints the lm ModelConfig it
maps to. The Python API is in lm.interop.llama (docs/interop.md).
"""
from __future__ import annotations

import argparse
import sys

from lm.interop.llama import export_llama, export_workdir, import_llama, load_llama_model

__all__ = ["export_llama", "export_workdir", "import_llama", "load_llama_model", "main"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lm.interop.hf",
                                     description="Export to / import from Hugging Face Llama checkpoints.")
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="a training run's checkpoint -> a LlamaForCausalLM folder")
    export.add_argument("--workdir", required=True, help="training workdir (config.json, checkpoints/)")
    export.add_argument("--out", required=True, help="folder to create (must be new or empty)")
    export.add_argument("--step", type=int, default=None, help="checkpoint step; default: the latest")
    export.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    inspect = commands.add_parser("inspect", help="print the lm ModelConfig of a Hugging Face folder")
    inspect.add_argument("--hf_dir", required=True, help="folder with config.json and safetensors")
    inspect.add_argument("--scan_layers", action="store_true", help="import with stacked layers")
    return parser.parse_args(argv)


def run_export(args: argparse.Namespace) -> None:
    step = export_workdir(args.workdir, args.out, args.step, args.overwrite)
    print(f"exported step {step} of {args.workdir} to {args.out}")


def run_inspect(args: argparse.Namespace) -> None:
    import jax
    import numpy as np

    from lm.interop.llama_config import describe

    cfg, params = import_llama(args.hf_dir, args.scan_layers)
    count = sum(int(np.size(leaf)) for leaf in jax.tree.leaves(params))
    print(describe(cfg))
    print(f"# {count:,} parameters")


def main(argv: list[str] | None = None) -> int:
    """Runs one command; input and configuration errors print one line and return 2."""
    from lm.configlib import ConfigError
    from lm.train.checkpoint import CheckpointError

    args = parse_args(argv)
    try:
        run_export(args) if args.command == "export" else run_inspect(args)
    except (ConfigError, CheckpointError, ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
