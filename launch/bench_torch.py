"""PyTorch eager reference benchmark for the decoder-only Transformer train step.

Mirrors the JAX model (pre-LN, tied embeddings, rotary or learned positions, GELU-tanh MLP,
AdamW + global-norm clipping, f32) so train-step throughput can be compared side by side on
CPU. Not a test; torch is not a project requirement.

Example:
    python launch/bench_torch.py --layers 4 --d_model 256 --steps 30 --json
"""

import argparse
import json
import statistics
import sys
import time

try:
    import torch
    import torch.nn.functional as F
    from torch import nn
except ImportError:
    sys.exit("pip install torch==2.13.0")


def rotary_tables(seq: int, head_dim: int, theta: float = 10000.0):
    """Returns (cos, sin) of shape [T, H] for the rotate-half convention."""
    freqs = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.arange(seq, dtype=torch.float32)[:, None] * freqs[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotates x [B, N, T, H]: x*cos + cat(-x2, x1)*sin over the full head dim."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class Block(nn.Module):
    """Pre-LN Transformer block: causal self-attention and a GELU-tanh MLP, no biases."""

    def __init__(self, d_model: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, d_model // heads
        inner = heads * self.head_dim
        self.ln1 = nn.LayerNorm(d_model, eps=1e-6)
        self.wq = nn.Linear(d_model, inner, bias=False)
        self.wk = nn.Linear(d_model, inner, bias=False)
        self.wv = nn.Linear(d_model, inner, bias=False)
        self.wo = nn.Linear(inner, d_model, bias=False)
        self.ln2 = nn.LayerNorm(d_model, eps=1e-6)
        self.w1 = nn.Linear(d_model, 4 * d_model, bias=False)
        self.w2 = nn.Linear(4 * d_model, d_model, bias=False)

    def forward(self, h: torch.Tensor, rope: tuple | None) -> torch.Tensor:
        b, t, _ = h.shape
        x = self.ln1(h)
        q, k, v = (
            w(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
            for w in (self.wq, self.wk, self.wv)
        )
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # scale 1/sqrt(H)
        h = h + self.wo(a.transpose(1, 2).reshape(b, t, -1))
        return h + self.w2(F.gelu(self.w1(self.ln2(h)), approximate="tanh"))


class Transformer(nn.Module):
    """Decoder-only LM with tied output embedding and a final LayerNorm."""

    def __init__(self, args: argparse.Namespace):
        super().__init__()
        self.embed = nn.Parameter(torch.randn(args.vocab, args.d_model) * 0.02)
        self.pos = None
        if args.positions == "learned":
            self.pos = nn.Parameter(torch.randn(args.seq, args.d_model) * 0.02)
        else:
            cos, sin = rotary_tables(args.seq, args.d_model // args.heads)
            self.register_buffer("cos", cos, persistent=False)
            self.register_buffer("sin", sin, persistent=False)
        self.blocks = nn.ModuleList(Block(args.d_model, args.heads) for _ in range(args.layers))
        self.ln_f = nn.LayerNorm(args.d_model, eps=1e-6)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed[tokens]
        rope = None
        if self.pos is not None:
            h = h + self.pos[: tokens.shape[1]]
        else:
            t = tokens.shape[1]
            rope = (self.cos[:t], self.sin[:t])
        for block in self.blocks:
            h = block(h, rope)
        return self.ln_f(h) @ self.embed.T


INT_FLAGS = dict(
    layers=4, d_model=256, heads=4, seq=256, batch=16, vocab=256, steps=30, warmup=5, threads=2
)


def main() -> None:
    """Parses flags, times `steps` eager train steps after `warmup`, prints the results."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in INT_FLAGS.items():
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--positions", choices=["rotary", "learned"], default="rotary")
    p.add_argument("--json", action="store_true", help="also print one JSON line")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Transformer(args)
    params = sum(t.numel() for t in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    tokens = torch.randint(0, args.vocab, (args.batch, args.seq))

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        logits = model(tokens)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, args.vocab), tokens[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.item()

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - t0)
    elapsed = sum(times)
    tokens_per_s = args.steps * args.batch * args.seq / elapsed
    median_ms, mean_ms = 1e3 * statistics.median(times), 1e3 * statistics.mean(times)

    cfg = " ".join(f"{k}={getattr(args, k)}" for k in [*INT_FLAGS, "positions"])
    print(f"torch {torch.__version__} eager | params {params:,} | {cfg}")
    print(
        f"{tokens_per_s:,.0f} tokens/s | step ms median {median_ms:.1f} mean {mean_ms:.1f} "
        f"| final loss {loss:.4f}"
    )
    if args.json:
        out = dict(impl="torch-eager", tokens_per_s=tokens_per_s, step_ms_median=median_ms)
        out.update(step_ms_mean=mean_ms, params=params, torch=torch.__version__)
        out.update({k: getattr(args, k) for k in [*INT_FLAGS, "positions"]})
        print(json.dumps(out))


if __name__ == "__main__":
    main()
