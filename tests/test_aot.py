"""Ahead-of-time compilation for real TPU slices and GPU nodes (aot/, launch/aot.py).

The compiles run the real TPU compiler (libtpu, `jax[tpu]`) and XLA:GPU (`jax[cuda13]`) on
compile-only devices; nothing runs on them. Shardings are asserted as exact PartitionSpecs of the
compiled executable's inputs, collectives from the compiled HLO.
"""

import pytest
from jax.sharding import PartitionSpec as P

from aot import collectives, hlo
from aot.slices import parse_slice
from experiments.gpt import get_config

pytest.importorskip("libtpu", reason="needs jax[tpu] (requirements-test.txt)")


def _cuda_available() -> bool:
    try:
        parse_slice("8xh100").devices()
    except Exception:  # no CUDA plugin installed (requirements-gpu-aot.txt)
        return False
    return True


def tiny(mesh: dict, rules: str, **model) -> object:
    config = get_config("size=tiny")
    with config.unlocked():
        config.data.batch_size = 16
        config.data.seq_len = 128
        config.train.grad_accum = 1
        config.model.layer_loop = "scan"
        config.model.dtype = "bfloat16"
        config.model.update(model)
        config.parallel.mesh.update({"data": 1, "stage": 1, "fsdp": 1, "tensor": 1} | mesh)
        config.parallel.rules = rules
    return config


# Expected specs of a few parameters (layers stacked on dim 0) under each rule table.
EXPECTED = {
    "dp": {"q": P(), "wi": P(), "embed": P()},
    "fsdp": {"q": P(None, "fsdp"), "wi": P(None, "fsdp"), "embed": P(None, "fsdp")},
    "tp": {"q": P(None, None, "tensor"), "wi": P(None, None, "tensor"), "embed": P("tensor")},
    "fsdp_tp": {
        "q": P(None, "fsdp", "tensor"),
        "wi": P(None, "fsdp", "tensor"),
        "embed": P("tensor", "fsdp"),
    },
}
MESHES = {
    "dp": {"data": 4},
    "fsdp": {"fsdp": 4},
    "tp": {"tensor": 4},
    "fsdp_tp": {"fsdp": 2, "tensor": 2},
}


def _strip(spec: P) -> P:
    parts = list(spec)
    while parts and parts[-1] is None:
        parts.pop()
    return P(*parts)


def _compiled_specs(compiled) -> dict:
    (state, _, _), _ = compiled.input_shardings
    params = state.params
    return {
        "q": _strip(params["layers"]["q"].spec),
        "wi": _strip(params["layers"]["wi"].spec),
        "embed": _strip(params["embed"].spec),
    }


@pytest.mark.parametrize(
    "topology, rules",
    [("v5e:2x2", "dp"), ("v5e:2x2", "fsdp"), ("v5e:2x2", "tp"), ("v4:2x2x1", "fsdp_tp")],
)
def test_tpu_input_shardings_follow_the_rule_table(topology, rules):
    from aot.compile import compile_steps

    config = tiny(MESHES[rules], rules)
    run, _, compiled, _, _ = compile_steps(config, parse_slice(topology), eval_step=False)
    assert run.mesh.devices.flat[0].platform == "tpu"
    assert _compiled_specs(compiled) == EXPECTED[rules]
    kinds = collectives.by_kind(collectives.collectives(compiled.as_text()))
    if rules == "dp":  # gradients all-reduced over data; no weight gathers
        assert "all-reduce" in kinds and "all-gather" not in kinds
    if rules == "fsdp":  # ZeRO-3: weights gathered, gradients reduce-scattered (TPU has the pass)
        assert kinds["all-gather"]["count"] > 0
        assert kinds["reduce-scatter"]["count"] > 0, sorted(kinds)


def test_gpu_input_shardings_follow_the_rule_table():
    if not _cuda_available():
        pytest.skip("needs jax[cuda13] (requirements-gpu-aot.txt)")
    from aot.compile import compile_steps

    config = tiny({"fsdp": 4, "tensor": 2}, "fsdp_tp")
    run, _, compiled, _, _ = compile_steps(config, parse_slice("8xh100"), eval_step=False)
    assert run.mesh.devices.flat[0].platform == "gpu"
    assert _compiled_specs(compiled) == EXPECTED["fsdp_tp"]
    kinds = collectives.by_kind(collectives.collectives(compiled.as_text()))
    assert kinds["all-gather"]["count"] > 0 and kinds["all-reduce"]["count"] > 0


def test_program_flops_count_loops_and_equal_the_model_formula():
    """matmul_flops walks scans and microbatch loops (XLA's cost_analysis counts them once)."""
    from aot.compile import compile_for

    config = tiny({"fsdp": 4}, "fsdp")
    with config.unlocked():
        config.train.grad_accum = 2
        config.model.causal_blocks = 1  # the formula counts every key; the blocks skip some
    r = compile_for(config, parse_slice("v5e:2x2"), eval_step=False)
    assert r["hlo_flops_per_step"] == pytest.approx(r["model_flops_per_step"], rel=0.02)


def _aot(capsys, *args: str) -> tuple[int, str, str]:
    """launch/aot.py's main in this process (the same code path as the command line)."""
    from launch.aot import main

    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize(
    "args, field",
    [
        (["--topology", "v9-32"], "--topology"),
        (["--topology", "v5p-7"], "--topology"),
        (["--topology", "12xh100"], "--topology"),
        (["--topology", "v5e:2x2", "--config.parallel.mesh.data=3"], "parallel.mesh"),
        (["--topology", "v5e:2x2", "--config.model.n_heads=5"], "model.d_model"),
        (["--topology", "v5e:2x2", "--config.train.stepz=3"], "stepz"),
        (["--topology", "v5e:2x2", "--num_slices", "0"], "--num_slices"),
        (["--topology", "v5e:2x2", "--bogus"], "--bogus"),
    ],
)
def test_bad_input_exits_2_with_one_line(capsys, args, field):
    code, out, err = _aot(capsys, "--config", "experiments/gpt.py:size=tiny", *args)
    assert code == 2, err[-2000:]
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and field in errors[0], err[-2000:]
    assert out == ""


def test_bad_config_file_exits_2(capsys):
    code, _, err = _aot(capsys, "--config", "experiments/nope.py", "--topology", "v5e:2x2")
    assert code == 2 and "error: --config" in err


# --- parsers, on HLO text written by hand --------------------------------------------------


def test_slice_names():
    assert parse_slice("v4-32").chips == 16 and parse_slice("v4-32").topology == "2x2x4"
    assert parse_slice("v5p-128").topology == "4x4x4"
    assert parse_slice("v5litepod-16").topology == "4x4"
    assert parse_slice("v6e-256").chips == 256
    assert parse_slice("v5e:4x4").chips == 16
    s = parse_slice("64xh100")
    assert (s.chips, s.topology, s.chip.platform) == (64, "8x8", "cuda")
    assert parse_slice("v5e:2x2", num_slices=2).total_chips == 8
    for bad in ("v5p-7", "tpu", "3xh100x"):
        with pytest.raises(ValueError):
            parse_slice(bad)


def test_multislice_mesh_puts_data_over_dcn():
    import ml_collections

    from parallel.mesh import make_mesh

    devices = parse_slice("v5e:2x2", num_slices=2).devices()
    mesh = make_mesh(
        ml_collections.ConfigDict({"data": 2, "stage": 1, "fsdp": 4, "tensor": 1}), devices
    )
    slices = [[d.slice_index for d in row.flat] for row in mesh.devices]
    assert slices == [[0] * 4, [1] * 4]  # each data index is one slice; fsdp stays in it
    with pytest.raises(ValueError, match="multiple of the 2 slices"):
        make_mesh(
            ml_collections.ConfigDict({"data": 1, "stage": 1, "fsdp": 8, "tensor": 1}), devices
        )


def test_replica_group_spellings():
    g = collectives.replica_groups
    assert g("replica_groups={{0,1},{2,3}}, to_apply") == [[0, 1], [2, 3]]
    assert g("replica_groups=[2,4]<=[8], x") == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert g("replica_groups=[2,4]<=[4,2]T(1,0), x") == [[0, 2, 4, 6], [1, 3, 5, 7]]
    # TPU's mesh form: devices laid out by device_ids over the mesh, grouped along listed axes.
    text = "replica_groups=mesh['a'=2,'b'=2], device_ids=([2,2]T(1,0)) {'a'}, x"
    assert g(text) == [[0, 1], [2, 3]]
    assert g("replica_groups=mesh['a'=2,'b'=2] {'b'}, x") == [[0, 1], [2, 3]]
    assert g("replica_groups=mesh['a'=2,'b'=2] {'a'}, x") == [[0, 2], [1, 3]]


HLO = """\
HloModule m

%cond (p: (s32[], f32[8])) -> pred[] {
  %p = (s32[], f32[8]) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %c = s32[] constant(6)
  ROOT %lt = pred[] compare(%i, %c), direction=LT
}

%body (p.1: (s32[], f32[8])) -> (s32[], f32[8]) {
  %p.1 = (s32[], f32[8]) parameter(0)
  %x = f32[8] get-tuple-element(%p.1), index=1
  %ag = f32[32] all-gather(%x), replica_groups={{0,1,2,3},{4,5,6,7}}, dimensions={0}
  %ar = f32[8] all-reduce(%x), replica_groups={{0,4},{1,5},{2,6},{3,7}}, to_apply=%add
  %i.1 = s32[] get-tuple-element(%p.1), index=0
  ROOT %t = (s32[], f32[8]) tuple(%i.1, %ar)
}

ENTRY %main (a: f32[8]) -> f32[8] {
  %a = f32[8] parameter(0)
  %z = s32[] constant(0)
  %init = (s32[], f32[8]) tuple(%z, %a)
  %w = (s32[], f32[8]) while(%init), condition=%cond, body=%body
  ROOT %out = f32[8] get-tuple-element(%w), index=1
}
"""


def test_collectives_through_a_while_loop_and_over_dcn():
    # Devices 0-3 on slice 0, 4-7 on slice 1: the all-reduce pairs span slices.
    ops = collectives.collectives(HLO, [0, 0, 0, 0, 1, 1, 1, 1])
    kinds = collectives.by_kind(ops)
    assert kinds["all-gather"]["count"] == 6  # the loop condition's bound
    assert kinds["all-gather"]["bytes"] == 6 * 32 * 4
    assert kinds["all-gather"]["wire_bytes_ici"] == pytest.approx(6 * 128 * 3 / 4)
    assert kinds["all-reduce"]["wire_bytes_dcn"] == pytest.approx(6 * 32 * 2 * 1 / 2)
    assert kinds["all-reduce"]["wire_bytes_ici"] == 0
    assert hlo.Module(HLO).hbm_bytes() == pytest.approx(6 * (128 + 32 + 32 + 32))


def test_matmul_flops_of_lowered_text():
    mlir = """\
module @m {
  func.func public @main(%arg0: tensor<4x8xf32>) -> tensor<4x8xf32> {
    %0 = stablehlo.dot_general %arg0, %arg1, contracting_dims = [1] x [0] : (tensor<4x8xf32>, tensor<8x16xf32>) -> tensor<4x16xf32>
    %1:2 = stablehlo.while(%iterArg = %c, %iterArg_0 = %arg0) : tensor<i32>, tensor<4x8xf32>
    cond {
      %c_1 = stablehlo.constant dense<5> : tensor<i32>
      %2 = stablehlo.compare  LT, %iterArg, %c_1,  SIGNED : (tensor<i32>, tensor<i32>) -> tensor<i1>
      stablehlo.return %2 : tensor<i1>
    } do {
      %3 = func.call @inner(%iterArg_0) : (tensor<4x8xf32>) -> tensor<4x8xf32>
      stablehlo.return %iterArg, %3 : tensor<i32>, tensor<4x8xf32>
    }
    return %0 : tensor<4x8xf32>
  }
  func.func private @inner(%arg0: tensor<4x8xf32>) -> tensor<4x8xf32> {
    %0 = stablehlo.dot_general %arg0, %arg1, contracting_dims = [1] x [0] : (tensor<4x8xf32>, tensor<8x8xf32>) -> tensor<4x8xf32>
    return %0 : tensor<4x8xf32>
  }
}
"""  # noqa: E501
    assert hlo.matmul_flops(mlir) == 2 * 4 * 16 * 8 + 5 * 2 * 4 * 8 * 8


def test_multislice_gradients_cross_dcn_weights_stay_on_ici():
    from aot.compile import compile_for

    config = tiny({"data": 2, "fsdp": 4}, "fsdp")
    r = compile_for(config, parse_slice("v5e:2x2", num_slices=2), eval_step=False)
    kinds = r["collectives"]
    assert r["num_slices"] == 2 and r["chips"] == 8
    assert kinds["all-reduce"]["wire_bytes_dcn"] > 0  # data-parallel gradients between slices
    assert kinds["all-gather"]["wire_bytes_dcn"] == 0  # FSDP gathers inside each slice
    assert kinds["all-gather"]["wire_bytes_ici"] > 0
    assert r["dcn_s"] > 0


def test_search_candidates_divide_the_slice_and_the_model():
    from aot.search import candidates, rules_for

    config = tiny({}, "fsdp_tp")  # 4 heads, d_model 128, d_ff 512, 2 layers, 16 rows
    meshes = candidates(config, parse_slice("v5e:4x4"))
    assert meshes, "no candidate"
    for m in meshes:
        assert m["data"] * m["stage"] * m["fsdp"] * m["tensor"] == 16
        assert 4 % m["tensor"] == 0 and 2 % m["stage"] == 0
        assert 16 % (m["data"] * m["fsdp"]) == 0
    assert {"data": 16, "stage": 1, "fsdp": 1, "tensor": 1} in meshes
    assert {"data": 1, "stage": 1, "fsdp": 4, "tensor": 4} in meshes
    assert not any(m["tensor"] == 8 for m in meshes)  # 4 heads cannot split 8 ways
    assert rules_for({"data": 2, "stage": 1, "fsdp": 4, "tensor": 2}) == "fsdp_tp"
    # Two slices: data parallelism crosses DCN, so it is a multiple of the slice count.
    two = candidates(config, parse_slice("v5e:2x2", num_slices=2))
    assert two and all(m["data"] % 2 == 0 for m in two)


@pytest.mark.slow
def test_search_ranks_the_meshes_that_fit_by_step_time():
    from aot.search import search

    config = tiny({}, "fsdp_tp")
    ranked = search(config, parse_slice("v5e:2x2"), log=lambda _: None, limit=3)
    fits = [r for r in ranked if r.get("fits")]
    assert len(fits) >= 2
    times = [r["step_time_s"] for r in fits]
    assert times == sorted(times)
    assert all(r["chips"] == 4 for r in fits)


def test_hbm_bytes_count_slices_not_whole_stacks():
    """A scan reads one layer of a stacked [L, ...] buffer per iteration, and writes one."""
    text = """\
HloModule m

%fused (p0: f32[16,1024], p1: s32[]) -> f32[1,1024] {
  %p0 = f32[16,1024] parameter(0)
  %p1 = s32[] parameter(1)
  %c = s32[] constant(0)
  ROOT %ds = f32[1,1024] dynamic-slice(%p0, %p1, %c), dynamic_slice_sizes={1,1024}
}

ENTRY %main (w: f32[16,1024], i: s32[], u: f32[1,1024]) -> f32[16,1024] {
  %w = f32[16,1024] parameter(0)
  %i = s32[] parameter(1)
  %u = f32[1,1024] parameter(2)
  %f = f32[1,1024] fusion(%w, %i), kind=kLoop, calls=%fused
  %z = s32[] constant(0)
  ROOT %dus = f32[16,1024] dynamic-update-slice(%w, %f, %i, %z)
}
"""
    # fusion: reads 4 KiB of the 64 KiB stack (+ the index), writes 4 KiB; the update: 2 x 4 KiB.
    assert hlo.Module(text).hbm_bytes() == pytest.approx(4096 + 4 + 4096 + 2 * 4096)
