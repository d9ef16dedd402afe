"""Small configs and runners shared by the training tests."""
import os
import subprocess
import sys

import ml_collections

from experiments import shakespeare_char

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_config(steps: int = 4, **model) -> ml_collections.ConfigDict:
    """The default experiment shrunk: synthetic tokens, 2 layers, 8-row batches, no samples."""
    config = shakespeare_char.get_config("smoke")
    config.data.backend = "synthetic"
    config.data.synthetic_vocab_size = 64
    config.data.batch_size = 8
    config.data.seq_len = 16
    config.data.eval_batches = 2
    config.model.vocab_size = 64
    config.model.num_layers = 2
    config.model.d_model = 32
    config.model.num_heads = 4
    config.model.num_kv_heads = 2
    config.model.max_len = 16
    config.model.update(model)
    config.optimizer.warmup_steps = 2
    config.train.steps = steps
    config.train.eval_every = steps
    config.train.checkpoint_every = steps
    config.train.log_every = 1
    config.train.sample_tokens = 0
    config.train.progress = False
    config.train.async_checkpoint = False
    config.mesh.data = 1
    return config


def pretrained_smoke_run(workdir: str) -> str:
    """The demo's 20-step smoke run trained into ``workdir`` on one device (no samples, no
    progress bar): a real checkpoint to start fine-tuning, alignment or evaluation from."""
    import jax

    from lm.train.loop import pretrain

    config = shakespeare_char.get_config("smoke")
    config.train.progress, config.train.sample_tokens = False, 0
    pretrain(config, workdir, devices=jax.devices()[:1])
    return workdir


def run_module(module: str, *args: str, timeout: int = 600,
               env: dict | None = None) -> subprocess.CompletedProcess:
    """Runs ``python -m module args`` on one CPU device (no fake-device flag)."""
    env = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, **(env or {})}
    env["JAX_PLATFORMS"] = "cpu"
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
