"""GPT-3-shaped models on synthetic tokens: a throughput/MFU workload for accelerators.

    python -m launch.bench --config=experiments/gpt3_synthetic.py:125m
    python -m launch.main  --config=experiments/gpt3_synthetic.py:350m --workdir=runs/gpt3_350m

Variants: 125m (default), 350m, 1_3b. bf16 compute with f32 master parameters, sequence 1024.
No corpus and no TensorFlow: the data backend is synthetic.
"""
import ml_collections

from configs import base, models, optimizers


def get_config(variant: str = "125m") -> ml_collections.ConfigDict:
    presets = {"125m": models.gpt3_125m, "350m": models.gpt3_350m, "1_3b": models.gpt3_1_3b}
    if variant not in presets:
        raise ValueError(f"unknown variant {variant!r}; use one of {', '.join(presets)}")
    config = base.config()
    # Random tokens: measures the step, not the data. Global batch 16 sequences.
    config.data.update(backend="synthetic", synthetic_vocab_size=50257, seq_len=1024,
                       batch_size=16, eval_batches=4)
    config.model = presets[variant]()
    config.model.update(max_len=1024, dtype="bfloat16")  # bf16 compute; parameters stay float32
    config.optimizer = optimizers.adamw(lr=6e-4, min_lr=6e-5, warmup_steps=100, b2=0.95,
                                        weight_decay=0.1)
    # Synthetic tokens: samples would be noise.
    config.train.update(steps=1000, eval_every=500, checkpoint_every=500, sample_tokens=0)
    return config
