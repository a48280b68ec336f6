r"""Attention fwd + bwd temporaries per `model.attention_impl`, compiled for TPU and GPU from a CPU.

  JAX_PLATFORMS=cpu python launch/bench_attention_memory.py    # v5e:2x2 and 8 x H100, T = 8192
  JAX_PLATFORMS=cpu python launch/bench_attention_memory.py --seq=4096 --heads=16 --packed

Each row lowers `value_and_grad(sum(attention(q, k, v)))` with respect to q, k and v through the
models' own dispatch ('xla': `models.blocks.attend` with the decoder's [B, 1, T, T] mask bias
built inside the step; otherwise `models.blocks.attend_kernel`) at one row per chip, the batch
split over the `data` axis by the DP rules, bf16, causal, and compiles it for compile-only devices
(`jax.experimental.topologies`): TPU `--tpu` (xla, splash, flash) and `--gpus` H100s described by
aot/gpu_targets/h100.txtpb (xla, cudnn). Nothing is materialised on those devices. It prints the
compiled temporaries (`memory_analysis().temp_size_in_bytes`, per device), the arguments and
outputs, and the kernel custom calls in the compiled HLO (Mosaic `tpu_custom_call`s or cuDNN
`__cudnn$fmha*`: the proof that the kernel, not an interpreter or XLA, was compiled). `--packed`
passes segment ids (packed documents) to the kernels too; without it the rows are one document
each, and the xla path still builds its bias (as the decoder does).
"""

import os
import time

from absl import app, flags

_TPU = flags.DEFINE_string("tpu", "v5e:2x2", "TPU topology ('' to skip).")
_TPU_IMPLS = flags.DEFINE_list("tpu_impls", ["xla", "splash", "flash"], "Impls on the TPU.")
_GPUS = flags.DEFINE_integer("gpus", 8, "Compile-only H100s (0 to skip).")
_GPU_IMPLS = flags.DEFINE_list("gpu_impls", ["xla", "cudnn"], "Impls on the GPUs.")
_HEADS = flags.DEFINE_integer("heads", 8, "Query heads N.")
_KV_HEADS = flags.DEFINE_integer("kv_heads", 0, "Key/value heads K (0 = N).")
_SEQ = flags.DEFINE_integer("seq", 8192, "Sequence length T.")
_HEAD_DIM = flags.DEFINE_integer("head_dim", 128, "Head size H.")
_PACKED = flags.DEFINE_bool("packed", False, "Give the kernels segment ids.")
_GPU_TARGET = os.path.join(os.path.dirname(__file__), "..", "aot", "gpu_targets", "h100.txtpb")


def compile_one(impl: str, devices, *, N: int, K: int, T: int, H: int, packed: bool) -> dict:
    """Compiles the attention fwd + bwd of `impl` over `devices` (one row each); returns a row."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import AxisType, Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    from models import blocks
    from models.sizes import default_model_config
    from parallel.mesh import AXES
    from parallel.rules import get_rules

    cfg = default_model_config("tiny")
    cfg.update(n_heads=N, n_kv_heads=K, d_model=N * H, dtype="bfloat16", attention_impl=impl)
    blocks.validate(cfg)
    B = len(devices)
    mesh = Mesh(np.asarray(devices).reshape(B, 1, 1, 1), AXES, axis_types=(AxisType.Auto,) * 4)

    def attn(q_BTNH, k_BSKH, v_BSKH, seg_BT):
        if impl == "xla":
            bias = blocks.mask_bias(seg_BT, seg_BT, causal=True)
            return blocks.attend(q_BTNH, k_BSKH, v_BSKH, bias, cfg)
        segments_BT = seg_BT if packed else None
        return blocks.attend_kernel(
            q_BTNH, k_BSKH, v_BSKH, cfg, causal=True, segment_ids_BT=segments_BT
        )

    def loss(q_BTNH, k_BSKH, v_BSKH, seg_BT):
        return attn(q_BTNH, k_BSKH, v_BSKH, seg_BT).astype(jnp.float32).sum()

    step = jax.value_and_grad(loss, argnums=(0, 1, 2))
    rows = NamedSharding(mesh, P("data"))
    args = [
        jax.ShapeDtypeStruct((B, T, N, H), jnp.bfloat16, sharding=rows),
        jax.ShapeDtypeStruct((B, T, K, H), jnp.bfloat16, sharding=rows),
        jax.ShapeDtypeStruct((B, T, K, H), jnp.bfloat16, sharding=rows),
        jax.ShapeDtypeStruct((B, T), jnp.int32, sharding=rows),
    ]
    out_shardings = (NamedSharding(mesh, P()), (rows, rows, rows))
    t0 = time.perf_counter()
    with jax.set_mesh(mesh), nn.logical_axis_rules(get_rules("dp")):
        lowered = jax.jit(
            step, in_shardings=[a.sharding for a in args], out_shardings=out_shardings
        )
        compiled = lowered.lower(*args).compile()
    mem = compiled.memory_analysis()
    hlo = compiled.as_text()
    return {
        "impl": impl,
        "platform": devices[0].platform,
        "kind": devices[0].device_kind,
        "devices": B,
        "temp_gib": mem.temp_size_in_bytes / 2**30,
        "args_gib": mem.argument_size_in_bytes / 2**30,
        "out_gib": mem.output_size_in_bytes / 2**30,
        "compile_s": time.perf_counter() - t0,
        "kernel_calls": hlo.count('custom_call_target="tpu_custom_call"')
        + hlo.count('custom_call_target="__cudnn$fmha'),
    }


def main(argv):
    del argv
    from jax.experimental import topologies

    N, T, H = _HEADS.value, _SEQ.value, _HEAD_DIM.value
    K = _KV_HEADS.value or N
    shape = dict(N=N, K=K, T=T, H=H, packed=_PACKED.value)
    print(f"# fwd+bwd, 1 row per device, bf16, causal, {shape}")
    print(
        f"{'impl':7} {'device':24} {'n':>3} {'temp GiB':>9} {'args GiB':>9} {'out GiB':>8} "
        f"{'compile s':>9}"
    )
    targets = []
    if _TPU.value:
        tpus = topologies.get_topology_desc(topology_name=_TPU.value, platform="tpu").devices
        targets.append((tpus, _TPU_IMPLS.value))
    if _GPUS.value:
        with open(_GPU_TARGET) as f:
            target_config = f.read()
        gpus = topologies.get_topology_desc(
            "h100", platform="cuda", target_config=target_config, topology=f"1x1x{_GPUS.value}"
        ).devices
        targets.append((gpus, _GPU_IMPLS.value))
    for devices, impls in targets:
        for impl in impls:
            r = compile_one(impl, devices, **shape)
            print(
                f"{r['impl']:7} {r['kind'][:24]:24} {r['devices']:3d} {r['temp_gib']:9.3f} "
                f"{r['args_gib']:9.3f} {r['out_gib']:8.3f} {r['compile_s']:9.1f} "
                f"{r['kernel_calls']:7d}",
                flush=True,
            )


if __name__ == "__main__":
    app.run(main)
