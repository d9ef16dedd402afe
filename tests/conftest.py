"""Test set-up: 8 fake CPU devices (for sharded-vs-unsharded checks) and float32 matmuls."""
import os
import sys

# Must precede the first jax import: the CPU backend reads it once. Most tests compile more than
# they run, so the CPU backend skips its costliest LLVM optimisations (compiles about twice as
# fast; LM_TEST_XLA_OPTIMIZE=1 keeps them).
_FAST_COMPILE = "" if os.environ.get("LM_TEST_XLA_OPTIMIZE") else " --xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8" + _FAST_COMPILE).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
SHARED_DATA = os.path.join(os.path.dirname(ROOT), "shared", "data")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running; run with -m slow")


@pytest.fixture
def one_device():
    return jax.devices()[:1]
