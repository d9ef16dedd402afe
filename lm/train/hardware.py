"""Peak matmul throughput: measured on this device in this process, and the vendor's figure."""
from __future__ import annotations

import time
from typing import Optional

import jax
import jax.numpy as jnp

# Dense bf16 peak FLOP/s per chip from vendor datasheets (no sparsity).
VENDOR_PEAK_BF16 = {
    "H100": 989e12, "H200": 989e12, "A100": 312e12, "B200": 2250e12,
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
    "TPU v6 lite": 918e12, "TPU v6e": 918e12,
}


def vendor_peak_flops(device: Optional[jax.Device] = None) -> Optional[float]:
    kind = (device or jax.devices()[0]).device_kind
    for name, peak in sorted(VENDOR_PEAK_BF16.items(), key=lambda kv: -len(kv[0])):
        if name.lower() in kind.lower():
            return peak
    return None


def measure_peak_matmul_flops(dtype=jnp.float32, size: int = 0, seconds: float = 1.0) -> float:
    """Best-of-repeats FLOP/s of one square matmul on the default device (all its cores)."""
    if not size:
        size = 1024 if jax.default_backend() == "cpu" else 8192
    a = jnp.ones((size, size), dtype)
    b = jnp.ones((size, size), dtype)
    matmul = jax.jit(lambda x, y: x @ y)
    matmul(a, b).block_until_ready()
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        matmul(a, b).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2.0 * size ** 3 / best
