"""Per-device memory from compiled executables of a ~100M-parameter model (nothing allocated)."""
import functools

import jax
import numpy as np
import pytest

from lm.train.compile_only import compile_report
from lm.train.loop import Trainer
from tests.helpers import small_config


def _gpt_100m(**model):
    """GPT-3 125M's body (12 layers, d_model 768) with a small vocabulary: ~85M parameters."""
    config = small_config(num_layers=12, d_model=768, num_heads=12, num_kv_heads=0,
                          scan_layers=True, **model)
    config.data.batch_size = 8
    config.data.seq_len = 128
    config.model.max_len = 128
    return config


@functools.lru_cache(maxsize=None)
def _report(devices: int, remat: str = "none", **mesh):
    config = _gpt_100m(remat=remat)
    config.mesh.update(mesh or dict(data=1))
    return compile_report(Trainer(config, "", jax.devices()[:devices]))


def _state_bytes(report):
    batch_bytes = 5 * 8 * 128 * 4 // report["devices"]
    return report["argument_bytes_per_device"] - batch_bytes


def test_model_is_about_100m_parameters():
    assert 80e6 <= _report(1)["num_params"] <= 120e6


def test_fsdp8_parameters_and_optimizer_state_at_most_a_sixth(capsys):
    one, fsdp = _state_bytes(_report(1)), _state_bytes(_report(8, data=1, fsdp=8))
    print(f"\nparameters + optimizer state per device: replicated {one / 2**20:.1f} MiB, "
          f"fsdp=8 {fsdp / 2**20:.1f} MiB (1/{one / fsdp:.2f})")
    assert fsdp <= one / 6


@pytest.mark.parametrize("devices,mesh", [(1, {}), pytest.param(8, dict(data=1, fsdp=8), marks=pytest.mark.slow)])
def test_full_remat_reduces_temporaries(devices, mesh):
    none = _report(devices, "none", **mesh)["temp_bytes_per_device"]
    full = _report(devices, "full", **mesh)["temp_bytes_per_device"]
    minimal = _report(devices, "minimal", **mesh)["temp_bytes_per_device"]
    print(f"\ntemporaries per device ({devices} devices): remat none {none / 2**20:.1f} MiB, "
          f"minimal {minimal / 2**20:.1f} MiB, full {full / 2**20:.1f} MiB")
    assert full < none
    assert full <= minimal <= none


def test_pipeline4_parameters_at_most_1_over_3_5(capsys):
    """Parameter bytes per device with pipeline=4 (stages sharded over devices) vs replicated."""
    def param_bytes(devices, **mesh):
        config = _gpt_100m(pipeline_stages=4, pipeline_microbatches=4)
        config.mesh.update(mesh or dict(data=1))
        trainer = Trainer(config, "", jax.devices()[:devices])
        shardings, shapes = trainer.shardings.params, trainer.abstract_state.params
        return sum(s.shard_shape(x.shape)[0] * int(np.prod(s.shard_shape(x.shape)[1:])) * 4
                   for s, x in zip(jax.tree.leaves(shardings), jax.tree.leaves(shapes)))
    one, piped = param_bytes(1), param_bytes(8, pipeline=4, data=2)
    report = _report_pipeline()
    print(f"\nparameters per device: replicated {one / 2**20:.1f} MiB, pipeline=4 "
          f"{piped / 2**20:.1f} MiB (1/{one / piped:.2f}); compiled arguments per device "
          f"{report['argument_bytes_per_device'] / 2**20:.1f} MiB")
    assert piped <= one / 3.5


def _report_pipeline():
    config = _gpt_100m(pipeline_stages=4, pipeline_microbatches=4)
    config.mesh.update(dict(pipeline=4, data=2))
    return compile_report(Trainer(config, "", jax.devices()))
