"""Times nanoGPT's own train step (PyTorch eager) from a checkout of github.com/karpathy/nanoGPT.

The peer that `launch/bench.py` compares against: nanoGPT's `model.py` (its `GPT`, `GPTConfig`
and `configure_optimizers`), imported from the checkout as it is, and the step of its
`train.py` (forward with targets, backward, global-norm clip 1.0, AdamW step,
`zero_grad(set_to_none=True)`), on random tokens. Not a test; torch is not a project requirement.

Example:
    git clone https://github.com/karpathy/nanoGPT ~/nanoGPT
    python launch/bench_nanogpt.py --nanogpt ~/nanoGPT --layers 4 --d_model 256 --json
"""

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time


def fail(message: str) -> None:
    """Bad input: one line on stderr, exit code 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def load_nanogpt(folder: str):
    """nanoGPT's `model` module from `folder`/model.py; exits 2 in one line if it is not there."""
    path = os.path.join(os.path.expanduser(folder), "model.py")
    if not os.path.isfile(path):
        fail(
            f"--nanogpt {folder}: no model.py there; "
            "git clone https://github.com/karpathy/nanoGPT and pass its folder"
        )
    spec = importlib.util.spec_from_file_location("nanogpt_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


INT_FLAGS = dict(
    layers=4, d_model=256, heads=4, seq=256, batch=16, vocab=256, grad_accum=1, steps=20, warmup=3
)


def main() -> None:
    """Parses flags, times `steps` train steps after `warmup`, prints the results."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nanogpt", required=True, help="folder of a nanoGPT checkout")
    for name, default in INT_FLAGS.items():
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--bias", type=int, choices=[0, 1], default=1, help="nanoGPT's `bias`")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--json", action="store_true", help="also print one JSON line")
    args = p.parse_args()
    try:
        import torch
    except ImportError:
        fail("the nanoGPT benchmark needs PyTorch: pip install torch")
    if args.batch % args.grad_accum:
        fail(f"--batch {args.batch} is not a multiple of --grad_accum {args.grad_accum}")
    nanogpt = load_nanogpt(args.nanogpt)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = nanogpt.GPTConfig(
        block_size=args.seq,
        vocab_size=args.vocab,
        n_layer=args.layers,
        n_head=args.heads,
        n_embd=args.d_model,
        dropout=0.0,
        bias=bool(args.bias),
    )
    model = nanogpt.GPT(config)  # prints its parameter count
    params = sum(t.numel() for t in model.parameters())
    opt = model.configure_optimizers(0.1, 6e-4, (0.9, 0.95), "cpu")  # train.py's defaults
    x = torch.randint(0, args.vocab, (args.batch, args.seq))
    y = torch.randint(0, args.vocab, (args.batch, args.seq))
    rows = args.batch // args.grad_accum

    def step() -> float:
        for i in range(args.grad_accum):  # train.py's micro-steps
            _, loss = model(x[i * rows : (i + 1) * rows], y[i * rows : (i + 1) * rows])
            (loss / args.grad_accum).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - t0)
    median_ms, mean_ms = 1e3 * statistics.median(times), 1e3 * statistics.mean(times)
    tokens_per_s = 1e3 * args.batch * args.seq / median_ms
    cfg = " ".join(f"{k}={getattr(args, k)}" for k in [*INT_FLAGS, "bias", "threads"])
    print(f"nanoGPT, torch {torch.__version__} eager | params {params:,} | {cfg}")
    print(
        f"{tokens_per_s:,.0f} tokens/s | step ms median {median_ms:.1f} mean {mean_ms:.1f} "
        f"| final loss {loss:.4f}"
    )
    if args.json:
        out = dict(impl="nanogpt", tokens_per_s=tokens_per_s, step_ms_median=median_ms)
        out.update(step_ms_mean=mean_ms, params=params, torch=torch.__version__)
        out.update({k: getattr(args, k) for k in [*INT_FLAGS, "bias", "threads"]})
        print(json.dumps(out))


if __name__ == "__main__":
    main()
