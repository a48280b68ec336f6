"""`model.attention_impl`: the fused kernels against the xla path (interpreted on CPU), their wiring
into the families, and the validation of what each kernel cannot compute.

Parity tolerances (f32, inputs of unit scale): outputs and gradients w.r.t. q, k, v within 2e-5
of `layers.dot_attention` with the same mask as a bias (measured: about 2e-6). bf16: the kernel's
error against an f32 reference is at most 1.5x the xla path's own bf16 error plus 4e-3.
"""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import attention as kernel_attention
from kernels import flash, placement, splash
from models import blocks, decoder, encdec, encoder
from models.layers import NEG_INF, attention_bias, dot_attention
from models.sizes import default_model_config
from models.sparse_attention import pattern_mask

B, T, N, K, H = 2, 384, 4, 2, 32  # three 128-tiles per sequence with block=128; GQA G = 2
# Several packed documents per row, crossing tile boundaries, and padding (0) at the end.
SEGMENTS = np.stack(
    [np.repeat([1, 2, 3, 4], [100, 150, 70, 64]), np.repeat([1, 2, 0], [200, 130, 54])]
).astype(np.int32)


def _qkv(dtype=jnp.float32, seed=0):
    rng = np.random.default_rng(seed)
    shapes = [(B, T, N, H), (B, T, K, H), (B, T, K, H), (B, T, N, H)]
    q, k, v, cot = (jnp.asarray(rng.normal(size=s), jnp.float32) for s in shapes)
    return q.astype(dtype), k.astype(dtype), v.astype(dtype), cot


def _out_and_grads(fn, q, k, v, cot):
    """fn(q, k, v) and the gradients of sum(fn(q, k, v) * cot) w.r.t. q, k, v, in one program."""

    def run(q, k, v):
        out, vjp = jax.vjp(fn, q, k, v)
        return out, vjp(cot.astype(out.dtype))

    return jax.jit(run)(q, k, v)


def _xla(bias):
    return lambda q, k, v: dot_attention(q, k, v, bias)


def _kernel(name, **kw):
    fn = {"splash": splash.attention, "flash": flash.attention}[name]
    return lambda q, k, v: fn(q, k, v, scale=H**-0.5, block=128, **kw)


def _errors(got, want) -> list[float]:
    """Max abs error of each of (output, dq, dk, dv)."""
    pairs = zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True)
    return [float(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32)).max()) for a, b in pairs]


def _max_errors(fn, ref, q, k, v, cot):
    return _errors(_out_and_grads(fn, q, k, v, cot), _out_and_grads(ref, q, k, v, cot))


@pytest.mark.parametrize("name", ["splash", "flash"])
def test_kernel_matches_xla_causal_packed_gqa(name):
    q, k, v, cot = _qkv()
    seg = jnp.asarray(SEGMENTS)
    fn = _kernel(name, causal=True, segment_ids_BT=seg, kv_segment_ids_BS=seg)
    errors = _max_errors(fn, _xla(attention_bias(seg, causal=True)), q, k, v, cot)
    print(f"{name} f32 max abs error out, dq, dk, dv: {errors}")
    assert max(errors) < 2e-5, errors


def test_splash_local_window_matches_xla():
    q, k, v, cot = _qkv(seed=1)
    seg = jnp.asarray(SEGMENTS)
    window = 100  # not a multiple of the tile: partial tiles on both edges of the band
    local = pattern_mask("local", T, causal=True, window=window)
    same = SEGMENTS[:, :, None] == SEGMENTS[:, None, :]
    bias = jnp.asarray(np.where(local[None] & same, 0.0, NEG_INF)[:, None], jnp.float32)
    fn = _kernel("splash", causal=True, segment_ids_BT=seg, kv_segment_ids_BS=seg, window=window)
    errors = _max_errors(fn, _xla(bias), q, k, v, cot)
    print(f"splash local w={window} f32 max abs error out, dq, dk, dv: {errors}")
    assert max(errors) < 2e-5, errors


@pytest.mark.parametrize("name", ["splash", "flash"])
def test_kernel_bf16_as_accurate_as_xla_bf16(name):
    q, k, v, cot = _qkv()
    seg = jnp.asarray(SEGMENTS)
    bias = attention_bias(seg, causal=True)
    fn = _kernel(name, causal=True, segment_ids_BT=seg, kv_segment_ids_BS=seg)
    want = _out_and_grads(_xla(bias), q, k, v, cot)  # f32
    half = [x.astype(jnp.bfloat16) for x in (q, k, v)]
    errors = {}
    for label, f in [("kernel", fn), ("xla", _xla(bias))]:
        got = _out_and_grads(f, *half, cot)
        assert got[0].dtype == jnp.bfloat16
        errors[label] = _errors(got, want)
    print(f"{name} bf16 max abs error vs f32 (out, dq, dk, dv): {errors}")
    for kernel_err, xla_err in zip(errors["kernel"], errors["xla"], strict=True):
        assert kernel_err <= 1.5 * xla_err + 4e-3, errors


@pytest.mark.parametrize("name", ["splash", "flash"])
def test_kernel_under_a_mesh_equals_unsharded(name):
    """Under an 8-device mesh (rows over data x fsdp, heads over tensor) the kernel runs in a
    shard_map, resolved from the logical rules, and computes what it computes on one device."""
    from parallel.mesh import AXES
    from parallel.rules import get_rules

    q, k, v, _ = _qkv(seed=2)
    seg = jnp.asarray(SEGMENTS)
    fn = lambda q, k, v: kernel_attention.attention(
        q, k, v, impl=name, causal=True, segment_ids_BT=seg
    )
    alone = jax.jit(fn)(q, k, v)
    mesh = jax.make_mesh((2, 1, 2, 2), AXES, axis_types=(jax.sharding.AxisType.Auto,) * 4)
    with jax.set_mesh(mesh), nn.logical_axis_rules(get_rules("fsdp_tp")):
        lowered = jax.jit(fn).lower(q, k, v).as_text()
        sharded = jax.jit(fn)(q, k, v)
    # 'batch' -> (data, fsdp) is 4 ways but B = 2: rows go over 'data' alone; heads (N = 4, K = 2)
    # over 'tensor'. So each device holds q [1, T, 2, H] and k, v [1, T, 1, H].
    assert "manual_computation" in lowered, "no shard_map in the lowered program"
    assert "tensor<1x384x2x32xf32>" in lowered and "tensor<1x384x1x32xf32>" in lowered
    np.testing.assert_allclose(sharded, alone, atol=1e-6)


def test_interpret_follows_the_mesh_platform():
    assert placement.target_platform() == "cpu" and placement.interpret()
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    with jax.set_mesh(mesh):
        assert placement.interpret()


# --- compile-only TPU and GPU devices (skipped where libtpu / the CUDA plugin are missing) -------


def _compile_only(platform):
    from jax.experimental import topologies

    try:
        if platform == "tpu":
            return topologies.get_topology_desc(topology_name="v5e:2x2", platform="tpu").devices
        with open("aot/gpu_targets/h100.txtpb") as f:
            txt = f.read()
        return topologies.get_topology_desc(
            "h100", platform="cuda", target_config=txt, topology="1x1x4"
        ).devices
    except Exception as e:  # no libtpu / CUDA plugin in this environment
        pytest.skip(f"no compile-only {platform} devices: {e}")


@pytest.mark.parametrize(
    "impl,platform,target",
    [
        ("splash", "tpu", "tpu_custom_call"),
        ("flash", "tpu", "tpu_custom_call"),
        ("cudnn", "gpu", "__cudnn$fmha"),
    ],
)
def test_compiles_the_real_kernel_for_compile_only_devices(impl, platform, target):
    """The default backend is CPU, but a mesh of compile-only TPUs / H100s gets the real kernel
    (Mosaic custom calls, not the interpreter's loops; cuDNN's fused attention)."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from parallel.mesh import AXES
    from parallel.rules import get_rules

    devices = _compile_only(platform)
    mesh = jax.sharding.Mesh(
        np.asarray(devices).reshape(4, 1, 1, 1), AXES, axis_types=(jax.sharding.AxisType.Auto,) * 4
    )
    cfg = _cfg(impl, dtype="bfloat16", n_heads=4, n_kv_heads=2, d_model=256)
    blocks.validate(cfg)

    def loss(q, k, v, seg):
        out = blocks.attend_kernel(q, k, v, cfg, causal=True, segment_ids_BT=seg)
        return out.astype(jnp.float32).sum()

    rows = NamedSharding(mesh, P("data"))
    args = [
        jax.ShapeDtypeStruct((4, 256, 4, 64), jnp.bfloat16, sharding=rows),
        jax.ShapeDtypeStruct((4, 256, 2, 64), jnp.bfloat16, sharding=rows),
        jax.ShapeDtypeStruct((4, 256, 2, 64), jnp.bfloat16, sharding=rows),
        jax.ShapeDtypeStruct((4, 256), jnp.int32, sharding=rows),
    ]
    with jax.set_mesh(mesh), nn.logical_axis_rules(get_rules("dp")):
        step = jax.jit(jax.grad(loss, argnums=(0, 1, 2)), out_shardings=(rows,) * 3)
        hlo = step.lower(*args).compile().as_text()
    assert f'custom_call_target="{target}' in hlo


# --- cuDNN's call (it cannot run on CPU) --------------------------------------------------------


def test_cudnn_passes_implementation_mask_window_and_scale(monkeypatch):
    calls = []
    real = jax.nn.dot_product_attention

    def spy(*args, **kw):
        calls.append(kw)
        return real(*args, **{**kw, "implementation": "xla"})

    monkeypatch.setattr(jax.nn, "dot_product_attention", spy)
    q, k, v, _ = _qkv(jnp.bfloat16)
    seg = jnp.asarray(SEGMENTS)
    out = kernel_attention.attention(q, k, v, impl="cudnn", causal=True, segment_ids_BT=seg)
    kernel_attention.attention(q, k, v, impl="cudnn", causal=True, window=64, scale=0.5)
    packed, local = calls
    assert packed["implementation"] == "cudnn" and packed["is_causal"]
    assert packed["mask"].shape == (B, 1, T, T) and packed["scale"] == H**-0.5
    assert local["mask"] is None and local["local_window_size"] == (63, 0) and local["scale"] == 0.5
    ref = dot_attention(q, k, v, attention_bias(seg, causal=True))
    np.testing.assert_allclose(out.astype(np.float32), ref.astype(np.float32), atol=2e-2)


# --- the families -------------------------------------------------------------------------------


def _cfg(impl, **kw):
    # One layer: interpreted kernels cost seconds of compile each, and every layer is wired alike.
    cfg = default_model_config("tiny")
    cfg.update(n_layers=1, d_model=64, n_heads=4, n_kv_heads=2, d_ff=128, attention_impl=impl)
    cfg.update(kw)
    return cfg


def _batch(seq=128, seed=0):
    """Two rows of packed documents (the second ends in padding), positions restarting at 0."""
    tokens = np.random.default_rng(seed).integers(0, 384, (2, seq)).astype(np.int32)
    segments = np.stack(
        [np.repeat([1, 2, 3], [50, 40, seq - 90]), np.repeat([1, 0], [100, seq - 100])]
    ).astype(np.int32)
    positions = np.zeros_like(segments)
    for row, seg in zip(positions, segments, strict=True):
        for s in np.unique(seg):
            row[seg == s] = np.arange((seg == s).sum())
    return {"tokens": tokens, "segment_ids": segments, "positions": positions}


@pytest.mark.parametrize("impl", ["splash", "flash"])
def test_decoder_logits_equal_xla(impl):
    batch = _batch()
    xla_cfg = _cfg("xla")
    params = nn.unbox(decoder.init(jax.random.key(0), xla_cfg))
    ref = jax.jit(lambda p, b: decoder.apply(p, b, xla_cfg))(params, batch)
    cfg = _cfg(impl)
    out = jax.jit(lambda p, b: decoder.apply(p, b, cfg))(params, batch)
    np.testing.assert_allclose(out, ref, atol=2e-5)
    unpacked = {"tokens": batch["tokens"]}  # one document per row: no segment ids to the kernel
    out = jax.jit(lambda p, b: decoder.apply(p, b, cfg))(params, unpacked)
    ref = jax.jit(lambda p, b: decoder.apply(p, b, xla_cfg))(params, unpacked)
    np.testing.assert_allclose(out, ref, atol=2e-5)


def test_decoder_builds_no_t_by_t_bias():
    batch = _batch()
    cfg = _cfg("splash")
    params = nn.unbox(decoder.init(jax.random.key(0), cfg))
    jaxpr = str(jax.make_jaxpr(lambda p, b: decoder.apply(p, b, cfg))(params, batch))
    assert "2,1,128,128" not in jaxpr.replace(" ", "")
    xla_jaxpr = str(jax.make_jaxpr(lambda p, b: decoder.apply(p, b, _cfg("xla")))(params, batch))
    assert "2,1,128,128" in xla_jaxpr.replace(" ", "")


@pytest.mark.slow
def test_decoder_local_layers_equal_xla():
    """GPT-3's alternating dense and local layers: splash's causal and local masks against the
    xla path's bias and blockwise local attention."""
    batch = _batch(seed=1)
    kw = dict(sparse=dict(pattern="local", window=32, layers="alternate"), n_layers=2)
    xla_cfg = _cfg("xla", **kw)
    params = nn.unbox(decoder.init(jax.random.key(1), xla_cfg))
    ref = decoder.apply(params, batch, xla_cfg)
    np.testing.assert_allclose(decoder.apply(params, batch, _cfg("splash", **kw)), ref, atol=2e-5)


@pytest.mark.slow
def test_encoder_and_encdec_logits_equal_xla():
    batch = _batch(seed=2)
    xla_cfg, cfg = _cfg("xla", family="encoder"), _cfg("splash", family="encoder")
    params = nn.unbox(encoder.init(jax.random.key(2), xla_cfg))
    np.testing.assert_allclose(
        encoder.apply(params, batch, cfg)["logits"],
        encoder.apply(params, batch, xla_cfg)["logits"],
        atol=2e-5,
    )
    enc_batch = {
        "inputs": batch["tokens"],
        "inputs_segment_ids": batch["segment_ids"],
        "inputs_positions": batch["positions"],
        "targets": batch["tokens"][:, ::-1][:, :128].copy(),
        "targets_segment_ids": batch["segment_ids"],
        "targets_positions": batch["positions"],
    }
    xla_cfg, cfg = _cfg("xla", family="encdec"), _cfg("splash", family="encdec")
    params = nn.unbox(encdec.init(jax.random.key(3), xla_cfg))
    np.testing.assert_allclose(
        encdec.apply(params, enc_batch, cfg), encdec.apply(params, enc_batch, xla_cfg), atol=2e-5
    )


# --- validation ---------------------------------------------------------------------------------


def test_validation_accepts_each_impl():
    for impl in ("xla", "splash", "flash"):
        blocks.validate(_cfg(impl))
    blocks.validate(_cfg("cudnn", dtype="bfloat16"))
    # The muP scale is folded into q.
    blocks.validate(_cfg("splash", mup=dict(enabled=True), attn_scale=False))
    blocks.validate(_cfg("splash", sparse=dict(pattern="local")))
    blocks.validate(_cfg("cudnn", dtype="bfloat16", sparse=dict(pattern="local")))


@pytest.mark.parametrize(
    "impl,kw,text",
    [
        ("pallas", {}, "model.attention_impl='pallas' is unknown; choose one of ['xla', 'splash'"),
        ("splash", {"positions": "relative"}, "positions='relative'"),
        ("flash", {"attn_dropout": 0.1}, "attn_dropout"),
        ("splash", {"attn_logits_dtype": "bfloat16"}, "attn_logits_dtype"),
        ("splash", {"sparse": {"pattern": "strided"}}, "'strided'"),
        ("flash", {"sparse": {"pattern": "local"}}, "model.attention_impl='flash' has no sliding"),
        ("cudnn", {}, "model.attention_impl='cudnn' takes bf16 inputs only"),
        ("cudnn", {"dtype": "bfloat16", "d_head": 12}, "head size"),
    ],
)
def test_validation_rejects_what_a_kernel_cannot_do(impl, kw, text):
    with pytest.raises(ValueError, match=re.escape(text)):
        blocks.validate(_cfg(impl, **kw))


def test_prefix_lm_batch_is_rejected():
    cfg = _cfg("splash")
    params = nn.unbox(decoder.init(jax.random.key(0), cfg))
    batch = {**_batch(), "prefix_mask": np.ones((2, 128), np.int32)}
    with pytest.raises(ValueError, match="model.attention_impl='splash' takes no prefix_mask"):
        decoder.apply(params, batch, cfg)


def test_lengths_must_be_multiples_of_128():
    q = jnp.zeros((1, 200, 2, 32))
    with pytest.raises(ValueError, match="divisible by 128"):
        splash.attention(q, q, q, causal=True, scale=1.0)
