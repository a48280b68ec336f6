"""Slice names -> compile-only devices of a real TPU slice or of GPU nodes, on any machine.

A SLICE is one of
  * a Cloud TPU accelerator type: `v4-32`, `v5p-128` (these count TensorCores, two per chip),
    `v5litepod-16`, `v5e-16`, `v6e-256` (these count chips);
  * a topology string: `v5e:4x4`, `v4:2x2x4`, `v5p:4x4x8`;
  * GPU nodes: `8xh100`, `64xh100`, `16xa100` (8 GPUs per node, NVLink inside, InfiniBand between).
`num_slices > 1` joins that many TPU slices over the data-centre network (multi-slice).

libtpu (`pip install jax[tpu]`) and, for GPUs, the CUDA plugin (`pip install jax[cuda13]`) give
devices that XLA compiles for and nothing runs on; the GPU's description (clock, cores, memory,
bandwidth) is read from `aot/gpu_targets/<kind>.txtpb`.
"""

import dataclasses
import math
import os
import re

from aot.chips import CHIPS, Chip

GPU_TARGETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpu_targets")

# Chips -> the standard slice shape (Cloud TPU documentation's topology tables).
_SHAPES_3D = {
    1: "1x1x1", 2: "2x1x1",
    4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8",
    512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16", 6144: "16x16x24",
}  # fmt: skip
_SHAPES_2D = {
    1: "1x1",
    4: "2x2",
    8: "2x4",
    16: "4x4",
    32: "4x8",
    64: "8x8",
    128: "8x16",
    256: "16x16",
}
_CLOUD = {  # accelerator-type prefix -> (chip, TensorCores per chip in the name)
    "v4": ("v4", 2),
    "v5p": ("v5p", 2),
    "v5litepod": ("v5e", 1),
    "v5e": ("v5e", 1),
    "v6e": ("v6e", 1),
}
GPUS_PER_NODE = 8


@dataclasses.dataclass(frozen=True)
class Slice:
    """A TPU slice (or several) or a set of GPU nodes."""

    name: str  # as the user wrote it
    chip: Chip
    topology: str  # '4x4x4' (TPU) or nodes 'x' GPUs (GPU)
    chips: int  # per slice
    num_slices: int = 1

    @property
    def total_chips(self) -> int:
        return self.chips * self.num_slices

    @property
    def hosts(self) -> int:
        return max(self.total_chips // self.chip.chips_per_host, 1)

    def describe(self) -> str:
        many = f" x {self.num_slices} slices (DCN)" if self.num_slices > 1 else ""
        return f"{self.name}: {self.total_chips} x {self.chip.name} ({self.topology}{many})"

    def devices(self) -> list:
        """Compile-only devices of this slice (nothing can run on them)."""
        from jax.experimental import topologies

        # libtpu takes a machine-wide lock on load, meant for processes that own the chips;
        # compile-only devices own none, so several compiling processes may load it at once.
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
        if self.chip.platform == "tpu":
            kwargs = {"num_slices": self.num_slices} if self.num_slices > 1 else {}
            if self.chip.name == "v4":
                kwargs["chip_config_name"] = "megacore"  # one device per chip, as v4 VMs run
            dims = [int(d) for d in self.topology.split("x")] + [1]
            bounds = tuple(min(d, b) for d, b in zip(dims, (2, 2, 1), strict=False))
            if bounds != (2, 2, 1):  # slices smaller than a host's 2x2 chips (v5e-1, v5p-2)
                kwargs["chips_per_host_bounds"] = bounds
            desc = topologies.get_topology_desc(
                topology_name=f"{self.chip.name}:{self.topology}", platform="tpu", **kwargs
            )
        else:
            with open(os.path.join(GPU_TARGETS, f"{self.chip.name}.txtpb")) as f:
                target = f.read()
            nodes = self.total_chips // GPUS_PER_NODE or 1
            per_node = min(self.total_chips, GPUS_PER_NODE)
            desc = topologies.get_topology_desc(
                self.chip.name, platform="cuda", target_config=target,
                topology=f"1x{nodes}x{per_node}",
            )  # fmt: skip
        return list(desc.devices)


def parse_slice(name: str, num_slices: int = 1) -> Slice:
    """Parses a SLICE (see the module docstring).

    Raises:
      ValueError: an unknown name or size, one line naming the accepted forms.
    """
    text = name.strip().lower()
    if num_slices < 1:
        raise ValueError(f"--num_slices={num_slices} must be at least 1")
    m = re.fullmatch(r"(\d+)x([a-z]\d+)", text)
    if m:  # GPU nodes
        count, kind = int(m.group(1)), m.group(2)
        if kind not in CHIPS or CHIPS[kind].platform != "cuda":
            gpus = sorted(k for k, c in CHIPS.items() if c.platform == "cuda")
            raise ValueError(f"--topology={name}: unknown GPU {kind!r}; known: {gpus}")
        if count % GPUS_PER_NODE and count > GPUS_PER_NODE or count < 1:
            raise ValueError(
                f"--topology={name}: GPU counts above one node must be whole nodes of "
                f"{GPUS_PER_NODE}; use 8x, 16x, 64x, ..."
            )
        if num_slices != 1:
            raise ValueError("--num_slices is for TPU slices; give GPU nodes as e.g. 64xh100")
        nodes = max(count // GPUS_PER_NODE, 1)
        return Slice(name, CHIPS[kind], f"{nodes}x{min(count, GPUS_PER_NODE)}", count)
    m = re.fullmatch(r"(v\w+?):(\d+(?:x\d+)+)", text)
    if m:  # topology string
        chip = _tpu_chip(m.group(1), name)
        dims = [int(d) for d in m.group(2).split("x")]
        return Slice(name, chip, m.group(2), math.prod(dims), num_slices)
    m = re.fullmatch(r"(v4|v5p|v5litepod|v5e|v6e)-(\d+)", text)
    if m:  # Cloud TPU accelerator type
        chip_name, cores = _CLOUD[m.group(1)]
        chips = int(m.group(2)) // cores
        table = _SHAPES_3D if chip_name in ("v4", "v5p") else _SHAPES_2D
        if chips not in table or int(m.group(2)) % cores:
            sizes = sorted(n * cores for n in table)
            raise ValueError(
                f"--topology={name}: no {m.group(1)} slice of that size; use one of {sizes}"
            )
        return Slice(name, CHIPS[chip_name], table[chips], chips, num_slices)
    raise ValueError(
        f"--topology={name!r} is not a slice; use a Cloud TPU type (v4-32, v5p-128, "
        "v5litepod-16, v6e-256), a topology (v5e:4x4, v5p:4x4x8) or GPU nodes (8xh100, 64xh100)"
    )


def _tpu_chip(kind: str, name: str) -> Chip:
    chip = CHIPS.get(kind)
    if chip is None or chip.platform != "tpu":
        tpus = sorted(k for k, c in CHIPS.items() if c.platform == "tpu")
        raise ValueError(f"--topology={name}: unknown TPU generation {kind!r}; known: {tpus}")
    return chip
