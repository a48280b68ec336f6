"""Roofline step time of a compiled step from its own counts and the chip's published figures.

A step cannot be faster than any one of
  compute  the compiled program's FLOPs per chip / peak bf16 FLOP/s;
  memory   the bytes it reads and writes in HBM per chip / HBM bandwidth;
  ICI      the bytes its in-slice collectives send per chip / (link bandwidth x the links one
           ring drives: 2 on a torus axis, both directions; 1 into the NVSwitch);
  DCN      the bytes its cross-slice (cross-node) collectives send per chip / DCN bandwidth.
The roofline is the largest of these, i.e. perfect overlap of the others under it; a real step is
slower (collectives not hidden, VPU-bound elementwise work, launch gaps), so the predicted MFU is
an upper bound. MFU counts only the model's FLOPs (6N + attention, models/counting.py), so
recomputation (remat) lowers it even when the chip is busy.
"""

from aot.chips import Chip


def roofline(
    chip: Chip,
    *,
    hlo_flops: float,
    hbm_bytes_accessed: float,
    ici_wire_bytes: float,
    dcn_wire_bytes: float,
    model_flops: float,
    tokens: float,
) -> dict[str, float | str]:
    """Step time bounds (seconds) and the predicted throughput, per chip.

    Args:
      chip: the accelerator's figures (aot/chips.py).
      hlo_flops: FLOPs the compiled program executes per chip per step.
      hbm_bytes_accessed: HBM bytes read and written per chip per step.
      ici_wire_bytes, dcn_wire_bytes: bytes sent per chip per step over ICI (NVLink) and DCN.
      model_flops: the model's FLOPs per chip per step (no recomputation).
      tokens: tokens per step over the whole slice.
    """
    times = {
        "compute": hlo_flops / chip.peak_flops,
        "memory": hbm_bytes_accessed / chip.hbm_bandwidth,
        "ici": ici_wire_bytes / (chip.link_bandwidth * chip.links_per_axis),
        "dcn": dcn_wire_bytes / chip.dcn_bandwidth,
    }
    bound = max(times, key=times.get)
    step = max(times[bound], 1e-12)
    return {
        **{f"{k}_s": v for k, v in times.items()},
        "bound": bound,
        "step_time_s": step,
        "tokens_per_s": tokens / step,
        "mfu": model_flops / (step * chip.peak_flops),
    }
