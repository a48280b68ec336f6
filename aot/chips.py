"""Published figures of every accelerator the AOT compiler targets: one table, each row cited.

Per chip (per GPU): dense bf16 peak FLOP/s, HBM capacity and bandwidth, the one-way bandwidth of
one ICI / NVLink link and how many links a collective along one mesh axis can drive, and the
data-centre network (DCN / InfiniBand) bandwidth per chip. The roofline (aot/roofline.py) uses
nothing else.

Sources:
  [tpu]  Google Cloud TPU documentation, "TPU v4", "TPU v5e", "TPU v5p", "TPU v6e" system
         architecture pages (peak bf16, HBM capacity and bandwidth, ICI topology).
  [book] Austin et al., "How to Scale Your Model" (2025), part 2 "How to think about TPUs",
         table of ICI one-way bandwidth per link (v4p 4.5e10, v5p 9e10, v5e 4.5e10, v6e 9e10
         bytes/s) and DCN bandwidth (about 2.5e10 bytes/s of egress per host).
  [h100] NVIDIA H100 Tensor Core GPU datasheet (SXM5): 989 TFLOP/s dense bf16, 80 GB HBM3 at
         3.35 TB/s, NVLink 4 at 900 GB/s per GPU (both directions), one 400 Gb/s ConnectX-7
         NDR InfiniBand port per GPU in a DGX H100.
  [a100] NVIDIA A100 Tensor Core GPU datasheet (SXM4 80 GB): 312 TFLOP/s dense bf16, 80 GB HBM2e
         at 2.039 TB/s, NVLink 3 at 600 GB/s per GPU, one 200 Gb/s HDR InfiniBand port per GPU
         in a DGX A100.
"""

import dataclasses

GiB = 1024**3
GB = 1e9


@dataclasses.dataclass(frozen=True)
class Chip:
    """One accelerator generation (figures per chip)."""

    name: str  # our name: v4, v5e, v5p, v6e, h100, a100
    platform: str  # 'tpu' | 'cuda'
    peak_flops: float  # dense bf16 FLOP/s
    hbm_bytes: float  # capacity
    hbm_bandwidth: float  # bytes/s
    link_bandwidth: float  # one-way bytes/s of one ICI link; NVLink: one direction, per GPU
    links_per_axis: int  # links a ring over one mesh axis drives at once (torus: 2, both ways)
    dcn_bandwidth: float  # bytes/s per chip between slices / nodes
    chips_per_host: int
    source: str

    def describe(self) -> str:
        return (
            f"{self.name}: {self.peak_flops / 1e12:.0f} TFLOP/s bf16, "
            f"{self.hbm_bytes / GiB:.0f} GiB HBM at {self.hbm_bandwidth / 1e12:.2f} TB/s"
        )


CHIPS = {
    c.name: c
    for c in (
        # TPU v4: 275 TFLOP/s, 32 GiB HBM2 at 1,200 GB/s, 3-D torus, 4 chips per host [tpu, book].
        Chip("v4", "tpu", 275e12, 32 * GiB, 1200 * GB, 45 * GB, 2, 25 * GB / 4, 4, "tpu, book"),
        # TPU v5e: 197 TFLOP/s, 16 GiB HBM2 at 819 GB/s, 2-D torus, 8 chips per host [tpu, book].
        Chip("v5e", "tpu", 197e12, 16 * GiB, 819 * GB, 45 * GB, 2, 25 * GB / 8, 8, "tpu, book"),
        # TPU v5p: 459 TFLOP/s, 95 GiB HBM2e at 2,765 GB/s, 3-D torus, 4 chips per host [tpu, book].
        Chip("v5p", "tpu", 459e12, 95 * GiB, 2765 * GB, 90 * GB, 2, 25 * GB / 4, 4, "tpu, book"),
        # TPU v6e (Trillium): 918 TFLOP/s, 32 GiB HBM at 1,640 GB/s, 2-D torus [tpu, book].
        Chip("v6e", "tpu", 918e12, 32 * GiB, 1640 * GB, 90 * GB, 2, 25 * GB / 8, 8, "tpu, book"),
        # H100 SXM5: NVLink 900 GB/s both ways = 450 GB/s one way through the NVSwitch [h100].
        Chip("h100", "cuda", 989e12, 80 * GB, 3350 * GB, 450 * GB, 1, 50 * GB, 8, "h100"),
        # A100 SXM4 80 GB: NVLink 600 GB/s both ways = 300 GB/s one way [a100].
        Chip("a100", "cuda", 312e12, 80 * GB, 2039 * GB, 300 * GB, 1, 25 * GB, 8, "a100"),
    )
}

# What `device_kind` compile-only devices report, to the table's names.
DEVICE_KINDS = {
    "TPU v4": "v4",
    "TPU v5 lite": "v5e",
    "TPU v5": "v5p",
    "TPU v6 lite": "v6e",
    "NVIDIA H100 80GB HBM3": "h100",
    "NVIDIA A100-SXM4-80GB": "a100",
}
