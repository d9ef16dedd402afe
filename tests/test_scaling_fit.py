"""The scaling-law fit recovers known laws."""
import numpy as np
import pytest

from lm.sweep.scaling import fit_power_law, optimum_by_parabola


def test_fit_recovers_an_exact_power_law():
    n = np.array([1e4, 3e4, 1e5, 3e5, 1e6, 3e6])
    loss = 40.0 * n ** -0.3 + 1.5
    law = fit_power_law(n, loss, grid=3000)
    assert law.alpha == pytest.approx(0.3, rel=0.02)
    assert law.c == pytest.approx(1.5, abs=0.01)
    np.testing.assert_allclose(law(n), loss, rtol=1e-3)


def test_parabola_optimum_of_an_iso_compute_curve():
    n = np.array([1e4, 1e5, 1e6, 1e7, 1e8])
    loss = 2.0 + 0.1 * (np.log(n) - np.log(3e6)) ** 2
    assert optimum_by_parabola(n, loss) == pytest.approx(3e6, rel=1e-6)
    rising = np.array([1.0, 2.0, 3.0, 4.0, 5.0])  # no interior minimum: the best point
    assert optimum_by_parabola(n, rising - 0.01 * np.log(n) ** 2) == pytest.approx(1e4, rel=1e-9)


def test_fit_needs_three_points():
    with pytest.raises(ValueError, match="at least 3 points"):
        fit_power_law([1, 2], [3, 2])
