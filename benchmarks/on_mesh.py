"""How closely a model used on the mesh matches one device: greedy tokens and the relative
differences of loglikelihoods and rolling loglikelihoods, for every architecture and PEFT method,
on 8 fake CPU devices with the two layouts of tests/test_on_mesh.py.

    python benchmarks/on_mesh.py

The test asserts the same cases (identical tokens, 1e-5 relative); this prints the margins.
"""
from __future__ import annotations

import os
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from lm.eval.scoring import ModelScorer  # noqa: E402
from tests.test_on_mesh import ARCHS, LAYOUTS, PEFT, _greedy, config_for, model_pair  # noqa: E402

PAIRS = [([5, 6, 7], [8, 9]), ([9], [10]), ([1, 2, 3, 4, 5, 6], [7, 8, 9]), ([11, 12], [13]),
         ([3], [4, 5, 6, 7])]
DOCUMENTS = [list(range(1, 40)), [7, 8, 9, 10, 11]]


def relative(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / np.abs(b)))


def row(layout: str, arch: str, peft: str = "none") -> str:
    run, sharded, single = model_pair(config_for(LAYOUTS[layout], arch, peft))
    same = _greedy(run, sharded, run.mesh) == _greedy(run, single)
    reference = ModelScorer(run.graphdef, single, run.exp.model, run.vocab, run.exp.data.seq_len, batch_size=4)
    scorer = run.scorer(sharded, batch_size=4)
    pairs = relative([x for x, _ in scorer.loglikelihood_tokens(PAIRS)],
                     [x for x, _ in reference.loglikelihood_tokens(PAIRS)])
    rolling = relative(scorer.loglikelihood_rolling_tokens(DOCUMENTS),
                       reference.loglikelihood_rolling_tokens(DOCUMENTS))
    name = arch if peft == "none" else f"{arch} + {peft}"
    return f"| {layout} | {name} | {'identical' if same else 'DIFFER'} | {pairs:.1e} | {rolling:.1e} |"


def main() -> None:
    jax.config.update("jax_default_matmul_precision", "highest")
    print("| layout | model | greedy tokens | loglikelihood (max rel. diff) | rolling (max rel. diff) |")
    print("|---|---|---|---:|---:|")
    for layout in LAYOUTS:
        for arch in ARCHS:
            print(row(layout, arch), flush=True)
        for peft in PEFT:
            print(row(layout, "decoder", peft), flush=True)


if __name__ == "__main__":
    main()
