r"""Times the train step of a config: tokens/s, step time, compile time and MFU.

  python launch/bench.py --nanogpt ~/nanoGPT  # the reference config against nanoGPT, 3 rounds
  python launch/bench.py --config experiments/gpt.py:size=tiny --steps 20
  python launch/bench.py --profile 3           # where the reference step's time goes

The reference config of docs/performance.md (4 layers, d_model 256, 4 heads, seq 256, batch 16,
vocab 256, f32) is `size=small` with `--vocab 256` (the default). MFU is against the peak
measured in the same run (best of an f32 2048^3 matmul) unless `train.peak_flops` is set.
Batches are random tokens of the config's shape (the data pipeline is not timed).

With `--nanogpt DIR` (a checkout of github.com/karpathy/nanoGPT) the config's model takes
nanoGPT's architecture (experiments/gpt.py:set_nanogpt; `--bias` as nanoGPT's) and nanoGPT's own
train step (`launch/bench_nanogpt.py`, PyTorch eager, in a subprocess) is timed too, alternating
with JAX for `--rounds` rounds so that both see the same machine load; it prints both medians,
the ratio and the load average. The JAX step is compiled once and timed `--steps` steps per round.
"""

import json
import os
import statistics
import sys
import time

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", "experiments/gpt.py:size=small", "Experiment config file[:args].", lock_config=True
)
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps (after 2 untimed warm-up steps).")
_VOCAB = flags.DEFINE_integer("vocab", 256, "Model vocabulary (256 = the reference config).")
_JSON = flags.DEFINE_bool("json", False, "Print one JSON line instead of a table.")
_NANOGPT = flags.DEFINE_string(
    "nanogpt", "", "A nanoGPT checkout: time its train step too, alternating (empty: JAX only)."
)
_BIAS = flags.DEFINE_bool("bias", True, "With --nanogpt: nanoGPT's `bias` (and ours to match).")
_PEER_ACCUM = flags.DEFINE_integer(
    "peer_grad_accum", 1, "With --nanogpt: nanoGPT's micro-steps per batch (1: the whole batch)."
)
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Alternating JAX / nanoGPT rounds with --nanogpt.")
_PROFILE = flags.DEFINE_integer(
    "profile",
    0,
    "Trace this many steps with jax.profiler and print where the time goes (train/profile.py): "
    "weight matmuls, batched matmuls and the rest by operation. XLA:CPU only.",
)
_REMAT = flags.DEFINE_list(
    "remat",
    [],
    "Remat policies to compare (names in models.decoder.REMAT_POLICIES, or 'all'): one row each "
    "with the compiled step's memory and time. Empty: the config's own policy only.",
)


class JaxBench:
    """The compiled train step of `config` on one random batch, timed in rounds."""

    def __init__(self, config):
        import numpy as np

        from train.loop import Run

        self.config = config
        self.run = run = Run(config, synthetic_data=True)
        B, T = config.data.batch_size, config.data.seq_len
        rng = np.random.default_rng(0)
        high = min(config.model.vocab_size, run.tokenizer.vocab_size)
        local = {
            "tokens": rng.integers(0, high, (B, T)).astype(np.int32),
            "segment_ids": np.ones((B, T), np.int32),
            "positions": np.broadcast_to(np.arange(T, dtype=np.int32), (B, T)).copy(),
        }
        with run.activate():
            self.batch = run.global_batch(local)
            t = time.perf_counter()
            self.compiled = run.train_step.lower(run.state, self.batch, run.schedule_args).compile()
            self.compile_s = time.perf_counter() - t
            self.memory = self.compiled.memory_analysis()
            self.state = run.state
            for _ in range(2):
                self.step()
        self.times: list[float] = []

    def step(self) -> None:
        """One train step, waited for (inside `self.run.activate()`)."""
        import jax

        self.state, m = self.compiled(self.state, self.batch, self.run.schedule_args)
        jax.block_until_ready(m)

    def time(self, steps: int) -> float:
        """Times `steps` more steps; returns their median step time in seconds."""
        import numpy as np

        times = []
        with self.run.activate():
            for _ in range(steps):
                t = time.perf_counter()
                self.step()
                times.append(time.perf_counter() - t)
        self.times += times
        return float(np.median(times))

    def profile(self, steps: int) -> list[tuple[str, float]]:
        """(group, ms per step) over `steps` traced steps (train/profile.py)."""
        from train.profile import profile

        with self.run.activate():
            return profile(self.step, self.compiled.as_text(), steps)

    def result(self) -> dict:
        import jax
        import numpy as np

        from train.perf import measure_peak_flops, mfu

        config, run, memory = self.config, self.run, self.memory
        peak = config.train.peak_flops or measure_peak_flops()
        B, T = config.data.batch_size, config.data.seq_len
        step_s = float(np.median(self.times))
        tok_s = B * T / step_s
        return {
            "impl": "jax",
            "size": config.model.size,
            "layers": config.model.n_layers,
            "d_model": config.model.d_model,
            "heads": config.model.n_heads,
            "seq": T,
            "batch": B,
            "vocab": config.model.vocab_size,
            "grad_accum": config.train.grad_accum,
            "devices": jax.device_count(),
            "params": run.counts["total"],
            "flops_per_token": run.flops["flops_per_token"],
            "remat": config.model.remat,
            "temp_mb": memory.temp_size_in_bytes / 2**20 if memory else None,
            "argument_mb": memory.argument_size_in_bytes / 2**20 if memory else None,
            "compile_s": self.compile_s,
            "step_ms_median": 1e3 * step_s,
            "step_ms_mean": 1e3 * float(np.mean(self.times)),
            "tokens_per_s": tok_s,
            "peak_gflops": peak / 1e9,
            "mfu": mfu(tok_s, run.flops["flops_per_token"], peak, jax.device_count()),
        }


def bench(config, steps: int) -> dict:
    """Compiles and times the train step of `config` on random batches."""
    b = JaxBench(config)
    b.time(steps)
    return b.result()


def nanogpt_bench(config, folder: str, steps: int) -> dict:
    """Runs launch/bench_nanogpt.py on the shape of `config` in a subprocess; its JSON line."""
    import subprocess

    m, d = config.model, config.data
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_nanogpt.py")
    args = dict(
        layers=m.n_layers, d_model=m.d_model, heads=m.n_heads, seq=d.seq_len, batch=d.batch_size
    )
    args.update(vocab=m.vocab_size, grad_accum=_PEER_ACCUM.value, bias=int(m.mlp_bias))
    args.update(steps=steps, warmup=3, nanogpt=folder)
    cmd = [sys.executable, script, "--json", *(f"--{k}={v}" for k, v in args.items())]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:  # its one-line error, and its exit code (2 for bad input)
        print(out.stderr.strip().splitlines()[-1], file=sys.stderr)
        sys.exit(out.returncode)
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare_with_nanogpt(config, folder: str, steps: int, rounds: int) -> dict:
    """JAX and nanoGPT alternating for `rounds` rounds; both medians and their ratio."""
    nanogpt_bench(config, folder, 1)  # a bad checkout fails before the JAX compile
    jax_bench = JaxBench(config)
    jax_ms, peer_ms = [], []
    tokens = config.data.batch_size * config.data.seq_len
    for r in range(rounds):
        jax_ms.append(1e3 * jax_bench.time(steps))
        peer_ms.append(nanogpt_bench(config, folder, steps)["step_ms_median"])
        print(
            f"round {r + 1}/{rounds}: jax {tokens / jax_ms[-1] * 1e3:8.0f} tokens/s   "
            f"nanoGPT {tokens / peer_ms[-1] * 1e3:8.0f} tokens/s   "
            f"load {os.getloadavg()[0]:.1f}",
            flush=True,
        )
    out = jax_bench.result()
    jax_tok = 1e3 * tokens / float(statistics.median(jax_ms))  # even count: mean of the middle two
    peer_tok = 1e3 * tokens / float(statistics.median(peer_ms))
    out.update(
        jax_round_ms=jax_ms,
        nanogpt_round_ms=peer_ms,
        jax_tokens_per_s=jax_tok,
        nanogpt_tokens_per_s=peer_tok,
        ratio=jax_tok / peer_tok,
        loadavg=os.getloadavg(),
    )
    return out


def remat_table(config, names: list[str], steps: int) -> list[dict]:
    """Benches the config once per remat policy and prints memory and time per policy."""
    from models.decoder import REMAT_POLICIES

    names = list(REMAT_POLICIES) if names == ["all"] else names
    unknown = sorted(set(names) - set(REMAT_POLICIES))
    if unknown:
        raise app.UsageError(f"--remat: unknown {unknown}; choose from {list(REMAT_POLICIES)}")
    rows = []
    for name in names:
        with config.unlocked():
            config.model.remat = name
        rows.append(bench(config, steps))
    print(
        f"model {config.model.size}: {config.model.n_layers} layers x d_model "
        f"{config.model.d_model}, seq {config.data.seq_len}, batch {config.data.batch_size} as "
        f"{config.train.grad_accum} microbatch(es); memory from compiled.memory_analysis()"
    )
    print(f"{'remat':<20}{'temp MB':>10}{'args MB':>10}{'step ms':>10}{'tokens/s':>10}")
    for r in rows:
        print(
            f"{r['remat']:<20}{r['temp_mb']:>10.1f}{r['argument_mb']:>10.1f}"
            f"{r['step_ms_median']:>10.1f}{r['tokens_per_s']:>10.0f}"
        )
    return rows


def print_profile(config, steps: int) -> None:
    """Compiles the step with per-op tracing on and prints the groups' ms per step."""
    from train.profile import TRACE_FLAG

    # read when the CPU backend starts, which is after this point (JaxBench makes the first array)
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TRACE_FLAG}".strip()
    b = JaxBench(config)
    wall_ms = 1e3 * b.time(steps)
    groups = b.profile(steps)
    if not groups:
        raise app.UsageError("--profile: the trace has no XLA:CPU op events (not a CPU backend?)")
    print(f"step {wall_ms:.1f} ms (median of {steps}); per-op times, ms per step:")
    for name, ms in groups[:25]:
        print(f"{ms:9.1f}  {name}")
    if len(groups) > 25:
        print(f"{sum(ms for _, ms in groups[25:]):9.1f}  ({len(groups) - 25} more groups)")
    total = sum(ms for _, ms in groups)
    print(f"{total:9.1f}  sum (ops on the two threads overlap, so it can exceed the step)")


def main(argv):
    del argv
    config = _CONFIG.value
    with config.unlocked():
        config.model.vocab_size = _VOCAB.value
    if _PROFILE.value:
        print_profile(config, _PROFILE.value)
        return
    if _REMAT.value:
        rows = remat_table(config, _REMAT.value, _STEPS.value)
        if _JSON.value:
            print(json.dumps(rows))
        return
    if _NANOGPT.value:
        from experiments.gpt import set_nanogpt

        with config.unlocked():
            set_nanogpt(config, _BIAS.value)
        r = compare_with_nanogpt(config, _NANOGPT.value, _STEPS.value, _ROUNDS.value)
    else:
        r = bench(config, _STEPS.value)
    if _JSON.value:
        print(json.dumps(r))
        return
    print(
        f"model {r['size']}: {r['layers']} layers x d_model {r['d_model']}, {r['heads']} heads, "
        f"seq {r['seq']}, batch {r['batch']} as {r['grad_accum']} microbatch(es), "
        f"vocab {r['vocab']}, {r['params']:,} params, "
        f"{r['devices']} device(s)"
    )
    print(f"compile      {r['compile_s']:8.2f} s")
    print(f"memory       {r['temp_mb']:8.1f} MB temporaries ({r['remat']} remat)")
    print(f"step         {r['step_ms_median']:8.1f} ms (median), {r['step_ms_mean']:.1f} ms (mean)")
    print(f"throughput   {r['tokens_per_s']:8.0f} tokens/s")
    print(f"MFU          {100 * r['mfu']:8.1f} % of {r['peak_gflops']:.0f} GFLOP/s measured peak")
    if _NANOGPT.value:
        load = " ".join(f"{x:.1f}" for x in r["loadavg"])
        print(
            f"vs nanoGPT   jax {r['jax_tokens_per_s']:.0f} tokens/s, nanoGPT (PyTorch eager) "
            f"{r['nanogpt_tokens_per_s']:.0f} tokens/s (medians of {len(r['jax_round_ms'])} "
            f"alternating rounds): ratio jax/nanoGPT {r['ratio']:.3f}; load average {load}"
        )


if __name__ == "__main__":
    app.run(main)
