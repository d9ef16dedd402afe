"""Scaling-law fits for sweeps: L(N) = a * N^(-alpha) + c, and the compute-optimal size.

Plain NumPy: for each c on a grid below the smallest loss, log(L - c) = log(a) - alpha log(N)
is a line fitted by least squares; the c with the smallest squared error in L wins.
"""
from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class PowerLaw:
    a: float
    alpha: float
    c: float
    rmse: float

    def __call__(self, n):
        return self.a * np.asarray(n, np.float64) ** -self.alpha + self.c


def fit_power_law(n, loss, grid: int = 400) -> PowerLaw:
    """Least-squares L(N) = a N^-alpha + c over N > 0 (at least 3 points)."""
    n, loss = np.asarray(n, np.float64), np.asarray(loss, np.float64)
    if len(n) < 3 or np.any(n <= 0):
        raise ValueError("a power-law fit needs at least 3 points with N > 0")
    best = None
    for c in np.linspace(0.0, loss.min(), grid, endpoint=False):
        slope, intercept = np.polyfit(np.log(n), np.log(loss - c), 1)
        law = PowerLaw(float(np.exp(intercept)), float(-slope), float(c), 0.0)
        rmse = float(np.sqrt(np.mean((law(n) - loss) ** 2)))
        if best is None or rmse < best.rmse:
            best = dataclasses.replace(law, rmse=rmse)
    return best


def optimum_by_parabola(n, loss) -> float:
    """The N minimising a parabola through (log N, L): the compute-optimal size of an
    iso-compute sweep (the smallest-loss point when the parabola opens downwards)."""
    x, loss = np.log(np.asarray(n, np.float64)), np.asarray(loss, np.float64)
    curvature, slope, _ = np.polyfit(x, loss, 2)
    if curvature <= 0:
        return float(np.exp(x[np.argmin(loss)]))
    return float(np.exp(np.clip(-slope / (2 * curvature), x.min(), x.max())))
