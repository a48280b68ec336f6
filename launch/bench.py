r"""Times the train step of a config: tokens/s, step time, compile time and MFU.

  python launch/bench.py --config experiments/gpt.py:size=small --steps 20

The reference config of the README (4 layers, d_model 256, 4 heads, seq 256, batch 16, vocab 256,
f32) is `size=small` with `--config.model.vocab_size=256` (the default). MFU is against the peak
measured in the same run (best of an f32 2048^3 matmul) unless `train.peak_flops` is set.
Batches are random tokens of the config's shape (the data pipeline is not timed).
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", "experiments/gpt.py:size=small", "Experiment config file[:args].", lock_config=True
)
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps (after 2 untimed warm-up steps).")
_VOCAB = flags.DEFINE_integer("vocab", 256, "Model vocabulary (256 = the reference config).")
_JSON = flags.DEFINE_bool("json", False, "Print one JSON line instead of a table.")
_REMAT = flags.DEFINE_list(
    "remat",
    [],
    "Remat policies to compare (names in models.decoder.REMAT_POLICIES, or 'all'): one row each "
    "with the compiled step's memory and time. Empty: the config's own policy only.",
)


def bench(config, steps: int) -> dict:
    """Compiles and times the train step of `config` on random batches."""
    import jax
    import numpy as np

    from train.loop import Run
    from train.perf import measure_peak_flops, mfu

    run = Run(config, synthetic_data=True)
    B, T = config.data.batch_size, config.data.seq_len
    rng = np.random.default_rng(0)
    high = min(config.model.vocab_size, run.tokenizer.vocab_size)
    local = {
        "tokens": rng.integers(0, high, (B, T)).astype(np.int32),
        "segment_ids": np.ones((B, T), np.int32),
        "positions": np.broadcast_to(np.arange(T, dtype=np.int32), (B, T)).copy(),
    }
    state = run.state
    with run.activate():
        batch = run.global_batch(local)
        t = time.perf_counter()
        compiled = run.train_step.lower(state, batch).compile()
        compile_s = time.perf_counter() - t
        memory = compiled.memory_analysis()
        for _ in range(2):
            state, m = compiled(state, batch)
        jax.block_until_ready(m)
        times = []
        for _ in range(steps):
            t = time.perf_counter()
            state, m = compiled(state, batch)
            jax.block_until_ready(m)
            times.append(time.perf_counter() - t)
    peak = config.train.peak_flops or measure_peak_flops()
    step_s = float(np.median(times))
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
        "compile_s": compile_s,
        "step_ms_median": 1e3 * step_s,
        "step_ms_mean": 1e3 * float(np.mean(times)),
        "tokens_per_s": tok_s,
        "peak_gflops": peak / 1e9,
        "mfu": mfu(tok_s, run.flops["flops_per_token"], peak, jax.device_count()),
    }


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


def main(argv):
    del argv
    config = _CONFIG.value
    with config.unlocked():
        config.model.vocab_size = _VOCAB.value
    if _REMAT.value:
        rows = remat_table(config, _REMAT.value, _STEPS.value)
        if _JSON.value:
            print(json.dumps(rows))
        return
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


if __name__ == "__main__":
    app.run(main)
