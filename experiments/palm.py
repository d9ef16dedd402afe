"""PaLM-shaped models (8B / 62B / 540B) on synthetic tokens: for compile-only sizing and pods.

    python -m launch.compile --config=experiments/palm.py:8b --fake_devices=64 \
        --config.mesh.fsdp=16 --config.mesh.tensor=4

The recipe of the paper: Adafactor (no factorization), lr 1e-2 then 1/sqrt(k), z-loss 1e-4,
sequence 2048, no dropout; bf16 compute, f32 parameters, full remat, scanned layers.
"""
import ml_collections

from configs import base, meshes, models, optimizers


def get_config(variant: str = "8b") -> ml_collections.ConfigDict:
    presets = {"8b": models.palm_8b, "62b": models.palm_62b, "540b": models.palm_540b}
    if variant not in presets:
        raise ValueError(f"unknown variant {variant!r}; use one of {', '.join(presets)}")
    config = base.config()
    # No corpus: sizing and throughput. Global batch 64 sequences (PaLM ramps 512 -> 2048).
    config.data.update(backend="synthetic", synthetic_vocab_size=256_000, seq_len=2048,
                       batch_size=64, eval_batches=1)
    config.model = presets[variant]()
    config.optimizer = optimizers.palm_adafactor()
    config.train.update(steps=10_000, eval_every=500, checkpoint_every=1000, z_loss=1e-4,
                        sample_tokens=0)
    config.mesh = meshes.palm_2d(tensor=4)
    return config
