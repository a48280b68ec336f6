"""Where a compiled step's time goes on XLA:CPU: per-op times from a `jax.profiler` trace,
grouped by what each op computes (weight matmuls, batched matmuls, and the rest by operation).

XLA:CPU reports one trace event per executed op (thunk) when the backend starts with
`--xla_cpu_enable_xprof_traceme=true` in XLA_FLAGS (`TRACE_FLAG`); the event names are the HLO
instruction names of the compiled program, whose text gives each op's output shape and the JAX
operation it came from (`op_name` metadata). Ops on the two worker threads may overlap, so the
groups can sum to more than the step's wall time.
"""

import collections
import glob
import gzip
import json
import os
import re
import tempfile

TRACE_FLAG = "--xla_cpu_enable_xprof_traceme=true"

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\S+?)(?:\{[^}]*\})? ")
_OP_NAME = re.compile(r'op_name="([^"]*)"')


def op_kinds(hlo_text: str) -> dict[str, str]:
    """HLO instruction name -> the group its time goes to.

    Dots (kept as `dot*`, or YNNPACK / XNNPACK / oneDNN fusions around one) with a 2-D output are
    'weight matmuls', with more dims 'batched matmuls' (attention's q.k and p.v); every other op
    is named by the last JAX operation in its `op_name`, with '(bwd)' when it comes from the
    backward pass (a `transpose(...)` in the name).
    """
    kinds = {}
    for line in hlo_text.splitlines():
        m = _INSTRUCTION.match(line)
        if not m:
            continue
        name, shape = m.groups()
        meta = _OP_NAME.search(line)
        op = meta.group(1) if meta else ""
        last = re.sub(r"\(.*", "", op.rsplit("/", 1)[-1]) or name.split(".")[0]
        if name.startswith(("dot", "ynn_fusion", "xnn_fusion", "onednn")) or last == "dot_general":
            rank = len(shape.split("[", 1)[1].split("]")[0].split(",")) if "[" in shape else 0
            kinds[name] = "weight matmuls" if rank <= 2 else "batched matmuls"
        else:
            kinds[name] = f"{last} (bwd)" if "transpose(" in op else last
    return kinds


def trace_op_times(trace_dir: str) -> dict[str, float]:
    """Event name -> total microseconds, from the perfetto trace `jax.profiler.trace` wrote."""
    files = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
    if not files:
        raise FileNotFoundError(f"no perfetto trace under {trace_dir}")
    with gzip.open(max(files, key=os.path.getmtime)) as f:
        events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
    times: collections.Counter = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and "dur" in e:
            times[e["name"]] += e["dur"]
    return dict(times)


def profile(run_once, hlo_text: str, steps: int) -> list[tuple[str, float]]:
    """Traces `steps` calls of `run_once()` (each one step, blocking); returns (group, ms per
    step), largest first. Empty when the backend ran without `TRACE_FLAG`."""
    import jax

    kinds = op_kinds(hlo_text)
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            for _ in range(steps):
                run_once()
        times = trace_op_times(trace_dir)
    groups: collections.Counter = collections.Counter()
    for name, us in times.items():
        if name in kinds:
            groups[kinds[name]] += us / 1e3 / steps
    return groups.most_common()
