"""Every collective of a compiled (optimised, SPMD-partitioned) HLO module, counted per step.

Works on the HLO of any backend: XLA:CPU's synchronous ops and the TPU/GPU compilers' async
`*-start`/`*-done` pairs. An op inside a `while` body counts as often as the loop runs (its
`known_trip_count`: scanned layers, gradient accumulation, pipeline iterations). Bytes are per
device per step, of the *logical* buffer a collective acts on: the array reduced (all-reduce),
the gathered result (all-gather), the full input before scattering (reduce-scatter), the array
sent (permute, all-to-all). `wire_bytes` turns that into what a ring moves over one device's
links: 2 (n-1)/n of it for an all-reduce, (n-1)/n for the gathers, scatters and all-to-all.

With several TPU slices, an op whose replica groups span slices goes over the data-centre
network (DCN); so do the host-transfer sends through which the TPU compiler hands cross-slice
reductions to its multi-slice runtime (`xla_megascale_runtime`); the rest stays on ICI.
"""

import dataclasses
import math
import re
from collections import defaultdict

import numpy as np

from aot.hlo import Module, array_bytes

KINDS = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")
_OP = re.compile(r"^\s*(?:ROOT )?%\S+ = (.+?) (" + "|".join(KINDS) + r")(-start)?\((.*)$")


@dataclasses.dataclass
class Collective:
    kind: str
    times: int  # executions per step
    bytes: float  # logical bytes per device per execution
    group: int  # devices per replica group
    dcn: bool  # a group spans several slices

    @property
    def wire_bytes(self) -> float:
        """Bytes one device sends per step in a ring implementation."""
        n = self.group
        if self.kind == "collective-permute":
            factor = 1.0
        elif n <= 1:
            factor = 0.0
        elif self.kind == "all-reduce":
            factor = 2 * (n - 1) / n
        else:
            factor = (n - 1) / n
        return self.times * self.bytes * factor


def _iota(spec: str) -> np.ndarray:
    """Device ids of an iota spelling `[dims]T(perm)` or `[n]` (flattened in mesh order)."""
    m = re.fullmatch(r"\[([0-9,]+)\](?:T\(([0-9,]+)\))?", spec.strip())
    dims = [int(x) for x in m.group(1).split(",")]
    ids = np.arange(math.prod(dims)).reshape(dims)
    if m.group(2):
        ids = ids.transpose([int(x) for x in m.group(2).split(",")])
    return ids.reshape(-1)


def replica_groups(attrs: str) -> list[list[int]] | None:
    """Device groups of a collective from any HLO spelling (None: not stated)."""
    m = re.search(
        r"replica_groups=mesh\[([^\]]*)\](?:,\s*device_ids=\((\[[0-9,]+\](?:T\([0-9,]+\))?)\))?\s*(?:\{([^}]*)\})?",
        attrs,
    )
    if m:  # mesh form: the groups vary along the listed axes (all axes when none is listed)
        axes = re.findall(r"'(\w+)'=(\d+)", m.group(1))
        names, sizes = [a for a, _ in axes], [int(n) for _, n in axes]
        ids = _iota(m.group(2)) if m.group(2) else np.arange(math.prod(sizes))
        grid = ids.reshape(sizes)
        listed = re.findall(r"'(\w+)'", m.group(3) or "") or names
        inner = [names.index(a) for a in listed]
        outer = [i for i in range(len(names)) if i not in inner]
        size = math.prod(sizes[i] for i in inner)
        return grid.transpose(outer + inner).reshape(-1, size).tolist()
    m = re.search(r"replica_groups=\[([0-9,]+)\]<=(\[[0-9,]+\](?:T\([0-9,]+\))?)", attrs)
    if m:  # iota form: reshape(transpose(reshape(iota, dims), perm), groups)
        shape = [int(x) for x in m.group(1).split(",")]
        return _iota(m.group(2)).reshape(shape[0], -1).tolist()
    m = re.search(r"replica_groups=\{(\{[0-9,{} ]*\})\}", attrs)
    if m:
        groups = re.findall(r"\{([0-9,]*)\}", m.group(1))
        return [[int(x) for x in g.split(",") if x] for g in groups]
    m = re.search(r"source_target_pairs=\{(\{[0-9,{} ]*\})\}", attrs)
    if m:
        return [[int(x) for x in g.split(",")] for g in re.findall(r"\{([0-9,]+)\}", m.group(1))]
    return None


def collectives(text: str, device_slices: list[int] | None = None) -> list[Collective]:
    """Every collective op of the module, with its executions per step.

    Args:
      text: `compiled.as_text()`.
      device_slices: slice index of each partition id (the mesh's devices in order); None or a
        single slice: every op is ICI.
    """
    multi = device_slices is not None and len(set(device_slices)) > 1
    module = Module(text)
    out: list[Collective] = []

    def add(line: str, times: int, scatter: bool = False) -> None:
        m = _OP.match(line)
        if not m:
            return
        types, kind, start, rest = m.groups()
        if scatter and kind == "all-reduce":  # its result is the full input, sliced after
            kind, start = "reduce-scatter-fused", start
        sizes = array_bytes(types)
        # An async start returns (operand, result, ...): the largest is the logical buffer.
        size = max(sizes, default=0) if start else sum(sizes)
        groups = replica_groups(rest)
        n = len(groups[0]) if groups and kind != "collective-permute" else 1 if not groups else 2
        if kind == "reduce-scatter":
            size *= n  # the op's result is one shard
        kind = kind.replace("-fused", "")
        dcn = bool(
            multi
            and groups
            and any(
                len({device_slices[i] for i in g if i < len(device_slices)}) > 1 for g in groups
            )
        )
        out.append(Collective(kind, times, size, n, dcn))

    n_slices = len(set(device_slices)) if device_slices else 1
    for _, line, times in module.walk():
        add(line, times)
        if " send(" in line and "xla_megascale_runtime" in line:
            # Multi-slice: the TPU compiler hands cross-slice (DCN) reductions to the megascale
            # runtime as host-transfer sends named after the collective they implement.
            kind = re.search(r'_xla_host_transfer_rendezvous="([a-z\-]+?)[.\d_]*"', line)
            kind = kind.group(1) if kind and kind.group(1) in KINDS else "all-reduce"
            data = array_bytes(line.split(" send(")[0])[:1]
            out.append(Collective(kind, times, sum(data), max(n_slices, 2), True))
        # The TPU compiler wraps a collective in fusions: `async-collective-start` (counted),
        # continuation fusions that overlap it with compute and `async-collective-done`, which
        # hold the same op again (not counted); a reduce-scatter is an `all-reduce-scatter`
        # fusion of an all-reduce and a dynamic slice.
        name = re.match(r"^\s*(?:ROOT )?%(\S+) =", line)
        if " fusion(" not in line or not name or "-done" in name.group(1):
            continue
        for callee in re.findall(r"calls=%([\w.\-]+)", line):
            if not callee.startswith("async_collective_fusion"):
                for inner in module.comps.get(callee, ()):
                    add(inner, times, scatter=callee.startswith("all-reduce-scatter"))
    return out


def parse_hlo(text: str) -> dict[str, dict[str, float]]:
    """`{kind: {'count': executions per step, 'bytes': logical bytes per device per step}}`."""
    out = defaultdict(lambda: {"count": 0, "bytes": 0})
    for op in collectives(text):
        out[op.kind]["count"] += op.times
        out[op.kind]["bytes"] += op.times * op.bytes
    return {k: dict(out[k]) for k in KINDS if k in out}


def by_kind(ops: list[Collective]) -> dict[str, dict[str, float]]:
    """Per kind and network: executions, logical and wire bytes per device per step."""
    out: dict[str, dict[str, float]] = {}
    for op in ops:
        row = out.setdefault(
            op.kind, {"count": 0, "bytes": 0.0, "wire_bytes_ici": 0.0, "wire_bytes_dcn": 0.0}
        )
        row["count"] += op.times
        row["bytes"] += op.times * op.bytes
        row["wire_bytes_dcn" if op.dcn else "wire_bytes_ici"] += op.wire_bytes
    return {k: out[k] for k in KINDS if k in out}
