r"""Attention fwd + bwd time and memory against T: dense vs local vs strided vs fixed (causal).

  python launch/bench_attention.py                      # T = 256 ... 4096, batch 1, 4 heads of 64
  python launch/bench_attention.py --seqs=512,1024 --patterns=dense,strided --repeats=5

Each row compiles `grad(sum(attention(q, k, v) * cotangent))` with respect to q, k and v and
prints the best and the median wall time (best-of-n is the figure least disturbed by other work
on a shared machine; the fits use it), the compiled temporaries
(`memory_analysis().temp_size_in_bytes`),
the key positions scored per query by the kernel (`sparse_attention.keys_per_query`), the score
elements N x T x keys, the attention FLOPs (12 x N x H x keys per token, the models/counting.py
convention: QK^T and AV, forward + backward) and the keys a query actually attends (the mask's mean
row count). Dense is `layers.dot_attention` with the causal bias built inside the step; local uses
`--window`; strided and fixed use l = ceil(sqrt(T)) (so strided costs O(T sqrt T)), fixed with
c = `--summary`. The last lines fit the growth exponent a of time ~ T^a (least squares in log-log)
and of temporaries for each pattern.
"""

import os
import time

from absl import app, flags

_SEQS = flags.DEFINE_list("seqs", ["256", "512", "1024", "2048", "4096"], "Sequence lengths T.")
_PATTERNS = flags.DEFINE_list("patterns", ["dense", "local", "strided", "fixed"], "Patterns.")
_HEADS = flags.DEFINE_integer("heads", 4, "Query heads N (= key/value heads).")
_HEAD_DIM = flags.DEFINE_integer("head_dim", 64, "Head size H.")
_WINDOW = flags.DEFINE_integer("window", 128, "w of the local pattern.")
_SUMMARY = flags.DEFINE_integer("summary", 1, "c of the fixed pattern.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per row (after one warm-up).")


def bench_one(pattern: str, T: int, N: int, H: int, window: int, summary: int, repeats: int):
    """Compiles and times one pattern at one T; returns the row as a dict."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from models.layers import attention_bias
    from models.sizes import default_model_config
    from models.sparse_attention import (
        attention_fn,
        keys_per_query,
        pattern_mask,
        resolved_stride,
    )

    cfg = default_model_config("tiny")
    cfg.n_layers = 1
    cfg.sparse.update(pattern=pattern, window=window, summary=summary)
    cfg.sparse.stride = 0  # ceil(sqrt(T))
    attend = attention_fn(cfg, 0)
    seg_BT = jnp.ones((1, T), jnp.int32)

    def loss(q, k, v, cot):
        bias = attention_bias(seg_BT, causal=True) if pattern == "dense" else None
        return (attend(q, k, v, bias, seg_BT) * cot).sum()

    rng = np.random.default_rng(0)
    q, k, v, cot = (jnp.asarray(rng.normal(size=(1, T, N, H)), jnp.float32) for _ in range(4))
    t0 = time.perf_counter()
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, k, v, cot).compile()
    compile_s = time.perf_counter() - t0
    temp = compiled.memory_analysis().temp_size_in_bytes
    jax.block_until_ready(compiled(q, k, v, cot))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(q, k, v, cot))
        times.append(time.perf_counter() - t0)
    keys = keys_per_query(cfg, 0, T)
    stride = resolved_stride(cfg, T)
    mask = pattern_mask(
        pattern, T, causal=True, window=window, stride=stride, summary=min(summary, stride)
    )
    return {
        "pattern": pattern,
        "T": T,
        "param": {"dense": "", "local": f"w={window}", "strided": f"l={stride}"}.get(
            pattern, f"l={stride},c={summary}"
        ),
        "best_ms": 1e3 * float(np.min(times)),
        "median_ms": 1e3 * float(np.median(times)),
        "compile_s": compile_s,
        "temp_mib": temp / 2**20,
        "keys_per_query": keys,
        "scores": N * T * keys,
        "gflop": 12 * N * H * T * keys / 1e9,
        "attended_per_query": float(mask.sum(1).mean()),
    }


def _fit(xs, ys) -> float:
    import numpy as np

    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def main(argv):
    del argv
    import jax

    print(f"# {jax.devices()[0].platform}, batch 1, N={_HEADS.value}, H={_HEAD_DIM.value}, f32")
    print(f"# load average: {os.getloadavg()}")
    header = (
        f"{'pattern':8} {'param':10} {'T':>5} {'best ms':>9} {'median ms':>9} {'temp MiB':>9} "
        f"{'keys/q':>7} {'scores':>10} {'GFLOP':>7} {'attended/q':>10} {'compile s':>9}"
    )
    print(header)
    rows = []
    for T in (int(s) for s in _SEQS.value):
        for pattern in _PATTERNS.value:
            r = bench_one(
                pattern,
                T,
                _HEADS.value,
                _HEAD_DIM.value,
                _WINDOW.value,
                _SUMMARY.value,
                _REPEATS.value,
            )
            rows.append(r)
            print(
                f"{r['pattern']:8} {r['param']:10} {T:5d} {r['best_ms']:9.1f} "
                f"{r['median_ms']:9.1f} {r['temp_mib']:9.2f} "
                f"{r['keys_per_query']:7d} {r['scores']:10d} {r['gflop']:7.2f} "
                f"{r['attended_per_query']:10.1f} {r['compile_s']:9.2f}",
                flush=True,
            )
    print("# growth exponents a (quantity ~ T^a, least squares over the T above):")
    for pattern in _PATTERNS.value:
        sel = [r for r in rows if r["pattern"] == pattern]
        if len(sel) < 2:
            continue
        Ts = [r["T"] for r in sel]
        big = sel[-3:]  # the small T fit in cache: the large-T slope is the asymptotic one
        print(
            f"#   {pattern:8} time {_fit(Ts, [r['best_ms'] for r in sel]):.2f} "
            f"(largest 3 T: {_fit([r['T'] for r in big], [r['best_ms'] for r in big]):.2f})  "
            f"temp {_fit(Ts, [max(r['temp_mib'], 1e-6) for r in sel]):.2f}  "
            f"scores {_fit(Ts, [r['scores'] for r in sel]):.2f}"
        )
    print(f"# load average: {os.getloadavg()}")


if __name__ == "__main__":
    app.run(main)
