r"""Compile every accelerator preset for its planned slice and write docs/presets.md.

  python docs/presets.py                      # all presets, smallest first (hours on 2 cores)
  python docs/presets.py --only llama,t5.py   # presets whose 'file:argument' contains either
  python docs/presets.py --table              # rewrite the table from docs/presets.json only

Each preset (experiments/common.accelerator_presets: the experiment's `presets()`) is compiled by
`launch/aot.py --json` in its own process (one at a time: a big compile takes GiBs of host
memory and both cores), its train and eval steps for the slice's compile-only devices. The
numbers of every compile are kept in docs/presets.json (so a rerun of some presets keeps the
others) and the table is rewritten after each one; both files are written atomically.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

from common import atomic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
GiB = 1024**3


def _machine() -> str:
    import jax

    try:
        from importlib.metadata import version

        libtpu = version("libtpu")
    except Exception:  # not installed: the TPU rows cannot compile anyway
        libtpu = "none"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (
        f"{os.cpu_count()} x {cpu}, Python {platform.python_version()}, jax {jax.__version__}, "
        f"libtpu {libtpu}"
    )


def compile_preset(path: str, arg: str, slice_name: str, timeout: float) -> dict:
    """One `launch/aot.py --json` run; its report, or {'error': ...} with the exit code."""
    cmd = [sys.executable, os.path.join(ROOT, "launch", "aot.py"), f"--config={path}:{arg}"]
    cmd += [f"--topology={slice_name}", "--json"]
    # Compile-only devices: several processes on this machine may load libtpu at once (its
    # lockfile guards a real TPU, of which there is none here).
    env = {**os.environ, "ALLOW_MULTIPLE_LIBTPU_LOAD": "1", "JAX_PLATFORMS": "cpu"}
    t0 = time.perf_counter()
    load = os.getloadavg()[0]
    try:
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s", "wall_s": timeout}
    out = {"wall_s": time.perf_counter() - t0, "exit": p.returncode}
    out["load_avg_before_after"] = [load, os.getloadavg()[0]]
    if p.returncode in (0, 3):
        return out | json.loads(p.stdout.strip().splitlines()[-1])
    lines = [ln.strip() for ln in p.stderr.splitlines() if ln.strip()]
    return out | {"error": lines[-1] if lines else f"exit {p.returncode}, no message"}


def _count(n: float) -> str:
    return f"{n / 1e9:.3g}B" if n >= 1e9 else f"{n / 1e6:.3g}M"


def _row(key: str, slice_name: str, plan: str, r: dict | None) -> str:
    preset = f"`{key.removeprefix('experiments/')}`"
    if r is None:
        return f"| {preset} | | {slice_name} | {plan} | | | not compiled yet | | | | |"
    if "error" in r:
        return f"| {preset} | | {slice_name} | {plan} | | | error: {r['error'][:160]} | | | | |"
    mesh = " x ".join(f"{k} {v}" for k, v in r["mesh"].items() if v > 1) or "1 chip"
    gib = r["hbm_bytes_per_chip"] / GiB
    ev = (r.get("eval_memory") or {}).get("total_bytes", 0) / GiB
    load = r.get("load_avg_before_after", [None, None])[1]
    return (
        f"| {preset} | {_count(r['params'])} | {slice_name} ({r['chips']} x {r['chip']}) | "
        f"{mesh} ({r['rules']}), {plan} | {r.get('attention_impl', 'xla, before the HBM fix')} | "
        f"{gib:.1f} / {r['hbm_capacity_bytes'] / GiB:.0f} "
        f"(eval {ev:.1f}) | {'yes' if r['fits'] else '**no**'} | "
        f"{r['step_time_s']:.2f} s ({r['bound']}) | {r['tokens_per_s']:,.0f} | "
        f"{100 * r['mfu']:.1f}% | {r['compile_s']:.0f}"
        + (f" (load {load:.1f})" if load is not None else "")
        + " |"
    )


def _plan(config) -> str:
    t, d = config.train, config.data
    micro = f"{t.grad_accum} microbatches" if t.grad_accum > 1 else "1 microbatch"
    return f"{micro} of {d.batch_size // t.grad_accum} x {d.seq_len}, remat {config.model.remat}"


def table(presets: list, plans: dict, results: dict, machine: str) -> str:
    lines = [
        "# Accelerator presets, compiled for their slices",
        "",
        "Written by `python docs/presets.py` (numbers in docs/presets.json). Every preset's train",
        "and eval steps compiled by `launch/aot.py` for compile-only devices of its slice: memory",
        "is XLA's buffer assignment on the chip (train step; eval in brackets), the step time the",
        "roofline of aot/roofline.py (the largest of compute, HBM, ICI and DCN time: an upper",
        "bound on throughput and MFU), compile s the train step's compile on this machine (with",
        "the 1-minute load average when it finished: other jobs shared the 2 cores). The",
        "mesh, microbatches and remat of each preset are its experiment file's plan.",
        "",
        f"Machine: {machine}.",
        "",
        "Rows whose attention reads 'xla, before the HBM fix' were compiled before the presets",
        "took the platform's fused attention kernel (splash on TPU, cudnn on GPU) and before",
        "aot/hlo.py counted sliced HBM traffic by the slice: their memory includes the",
        "[B, N, T, S] attention logits, and their roofline HBM time (so a memory-bound step",
        "time) is overstated.",
        "",
        "| preset | params | slice | mesh (rules), microbatches, remat | attention | GiB/chip of "
        "capacity | fits | roofline step | tokens/s | MFU | compile s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for path, arg, slice_name in presets:
        key = f"{path}:{arg}"
        lines.append(_row(key, slice_name, plans[key], results.get(key)))
    dates = sorted(r["date"] for r in results.values() if "date" in r)
    if dates:
        lines += ["", f"Compiled between {dates[0]} and {dates[-1]} (UTC)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", default="", help="comma-separated substrings of 'file:arg'")
    p.add_argument("--table", action="store_true", help="rewrite the table, compile nothing")
    p.add_argument("--timeout", type=float, default=4 * 3600, help="seconds per preset")
    args = p.parse_args(argv)
    from experiments.common import accelerator_presets
    from launch.cluster import load_config
    from models.counting import count_params

    presets = accelerator_presets()
    configs = {f"{p}:{a}": load_config(f"{p}:{a}", []) for p, a, _ in presets}
    plans = {k: _plan(c) for k, c in configs.items()}
    # Smallest first: the big compiles (175B, 70B) come last.
    presets.sort(key=lambda p: count_params(configs[f"{p[0]}:{p[1]}"].model)["total"])
    json_path = os.path.join(DOCS, "presets.json")
    results = {}
    if os.path.exists(json_path):
        with open(json_path) as f:
            results = json.load(f)
    machine = _machine()
    atomic.write_text(os.path.join(DOCS, "presets.md"), table(presets, plans, results, machine))
    if args.table:
        return 0
    for path, arg, slice_name in presets:
        key = f"{path}:{arg}"
        if args.only and not any(s in key for s in args.only.split(",")):
            continue
        print(f"{key} on {slice_name} ...", file=sys.stderr, flush=True)
        r = compile_preset(path, arg, slice_name, args.timeout)
        r["date"] = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M")
        r["machine"] = machine
        results[key] = r
        atomic.write_text(json_path, json.dumps(results, indent=1, sort_keys=True) + "\n")
        atomic.write_text(os.path.join(DOCS, "presets.md"), table(presets, plans, results, machine))
        print(f"  {_row(key, slice_name, plans[key], r)}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
