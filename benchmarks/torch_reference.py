"""A PyTorch peer of `lm`'s default experiment (experiments/shakespeare_char.py), on lm's own data.

nanoGPT's CPU "baby GPT": 4 layers, 4 heads, d_model 128, context 64, batch 12, exact-erf GELU
MLP with d_ff 512, LayerNorm without bias, learned positions, tied input/output embedding, no
biases, no dropout; init N(0, 0.02) with the residual output projections at 0.02/sqrt(2 * layers);
AdamW (0.9, 0.99, eps 1e-8, weight decay 0.1 on 2-D tensors only), lr 1e-3 with 100 warm-up
steps lr * (step + 1) / (warmup + 1), then cosine to 1e-4 at step 2000, global-norm clip 1.0.

Batches come from `lm.data.pipeline` (backend 'array', NumPy only; no JAX is imported), so the
training windows and the 50 validation batches are exactly the ones lm uses with seed 1337.

    python benchmarks/torch_reference.py --mode=bench   # last line: tokens_per_sec=<x>
    python benchmarks/torch_reference.py --mode=train   # full 2000 steps; final validation loss

Run it with a Python that has torch and numpy (see benchmarks/README.md); lm is imported from
this checkout.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import pathlib
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # this checkout's `lm`
from lm.data.pipeline import DataConfig, make_eval_batches, make_train_iterator, vocab_size  # noqa: E402

SEED = 1337


# ----------------------------------------------------------------------------- model

@dataclasses.dataclass(frozen=True)
class GPTConfig:
    vocab_size: int
    block_size: int = 64
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    d_ff: int = 512
    init_std: float = 0.02


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=False)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.c_attn(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(b, t, c))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, cfg.d_ff, bias=False)
        self.c_proj = nn.Linear(cfg.d_ff, cfg.n_embd, bias=False)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x)))  # exact (erf) GELU


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=1e-5, bias=False)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=1e-5, bias=False)
        self.mlp = MLP(cfg)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, eps=1e-5, bias=False)
        # The output head is the token embedding (tied): logits = ln_f(x) @ wte.weight.T.
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=cfg.init_std)
        for block in self.blocks:  # residual output projections
            for proj in (block.attn.c_proj, block.mlp.c_proj):
                nn.init.normal_(proj.weight, mean=0.0, std=cfg.init_std / math.sqrt(2 * cfg.n_layer))

    def forward(self, idx, targets=None):
        t = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(t, device=idx.device))
        for block in self.blocks:
            x = block(x)
        logits = F.linear(self.ln_f(x), self.wte.weight)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss


# ----------------------------------------------------------------------------- optimizer

@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup: int = 100
    betas: tuple = (0.9, 0.99)
    eps: float = 1e-8
    weight_decay: float = 0.1
    clip: float = 1.0


def lr_at(step: int, tc: TrainConfig) -> float:
    """Linear warm-up lr * (step + 1) / (warmup + 1), then cosine from lr to min_lr at tc.steps."""
    if step < tc.warmup:
        return tc.lr * (step + 1) / (tc.warmup + 1)
    progress = min(max((step - tc.warmup) / max(tc.steps - tc.warmup, 1), 0.0), 1.0)
    return tc.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (tc.lr - tc.min_lr)


def make_optimizer(model: nn.Module, tc: TrainConfig) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": tc.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=tc.lr, betas=tc.betas, eps=tc.eps)


def train_step(model, optimizer, tc: TrainConfig, step: int, x, y) -> torch.Tensor:
    """Forward, backward, global-norm clip and one AdamW update at the step's learning rate."""
    lr = lr_at(step, tc)
    for group in optimizer.param_groups:
        group["lr"] = lr
    _, loss = model(x, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), tc.clip)
    optimizer.step()
    return loss


# ----------------------------------------------------------------------------- data

def to_torch(batch) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.from_numpy(batch["inputs"]).long(), torch.from_numpy(batch["targets"]).long())


@torch.no_grad()
def evaluate(model, eval_batches) -> float:
    """Mean cross-entropy (nats per character) over the validation batches (all full, equal size)."""
    model.eval()
    losses = [model(x, y)[1].item() for x, y in eval_batches]
    model.train()
    return sum(losses) / len(losses)


# ----------------------------------------------------------------------------- modes

def build(data_cfg: DataConfig):
    torch.manual_seed(SEED)
    cfg = GPTConfig(vocab_size=vocab_size(data_cfg), block_size=data_cfg.seq_len)
    model = GPT(cfg)
    return cfg, model


def run_bench(args, data_cfg: DataConfig) -> None:
    cfg, model = build(data_cfg)
    tc = TrainConfig()
    optimizer = make_optimizer(model, tc)
    data = make_train_iterator(data_cfg, SEED)
    batches = [to_torch(next(data)) for _ in range(args.warmup + args.steps)]
    step = 0

    def window(window_batches) -> float:
        nonlocal step
        start = time.perf_counter()
        for x, y in window_batches:
            train_step(model, optimizer, tc, step, x, y)
            step += 1
        return (time.perf_counter() - start) / len(window_batches)

    window(batches[:args.warmup])
    best = min(window(batches[args.warmup:]) for _ in range(args.repeats))
    tokens_per_step = data_cfg.batch_size * data_cfg.seq_len
    print(f"torch={torch.__version__} threads={torch.get_num_threads()} "
          f"params={sum(p.numel() for p in model.parameters()):,} step_ms={best * 1e3:.2f}")
    print(f"tokens_per_sec={tokens_per_step / best:.0f}", flush=True)


def run_train(args, data_cfg: DataConfig) -> None:
    cfg, model = build(data_cfg)
    tc = TrainConfig(steps=args.train_steps)
    optimizer = make_optimizer(model, tc)
    data = make_train_iterator(data_cfg, SEED)
    eval_batches = [to_torch(b) for b in make_eval_batches(data_cfg)]
    print(f"torch={torch.__version__} threads={torch.get_num_threads()} "
          f"params={sum(p.numel() for p in model.parameters()):,} vocab={cfg.vocab_size} "
          f"eval_batches={len(eval_batches)}", flush=True)
    start = time.perf_counter()
    for step in range(tc.steps):
        x, y = to_torch(next(data))
        loss = train_step(model, optimizer, tc, step, x, y)
        if step % args.log_every == 0 or step == tc.steps - 1:
            print(f"step {step:5d}  train_loss {loss.item():.4f}  lr {lr_at(step, tc):.2e}  "
                  f"{time.perf_counter() - start:7.1f}s", flush=True)
    train_seconds = time.perf_counter() - start
    val_loss = evaluate(model, eval_batches)
    total_seconds = time.perf_counter() - start
    print(f"train_seconds={train_seconds:.1f} total_seconds={total_seconds:.1f} "
          f"(train steps + final evaluation)")
    print(f"final_val_loss={val_loss:.4f} steps={tc.steps} wall_seconds={total_seconds:.1f}",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=("bench", "train"), default="bench")
    parser.add_argument("--steps", type=int, default=60, help="bench: timed steps per window")
    parser.add_argument("--warmup", type=int, default=5, help="bench: untimed steps first")
    parser.add_argument("--repeats", type=int, default=3, help="bench: windows; the best counts")
    parser.add_argument("--train_steps", type=int, default=2000, help="train: optimizer steps")
    parser.add_argument("--log_every", type=int, default=250, help="train: progress lines")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data_cfg = DataConfig(backend="array", seq_len=64, batch_size=12, eval_batches=50)
    (run_bench if args.mode == "bench" else run_train)(args, data_cfg)


if __name__ == "__main__":
    main()
