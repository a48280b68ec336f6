"""Compiled memory against the slice for real TPU targets: batch and remat move it, the CLI's
fits / does-not-fit exit codes. (Whole presets on their slices are compiled by
docs/presets.py, a benchmark script: docs/presets.md.)

The slowest compiles of the AOT tests, in their own file so that `pytest --dist loadfile`
can run them beside tests/test_aot.py.
"""

import json

import pytest

from aot.slices import parse_slice

pytest.importorskip("libtpu", reason="needs jax[tpu] (requirements-test.txt)")

from test_aot import _aot, tiny  # noqa: E402


def test_memory_grows_with_batch_and_falls_with_remat():
    from aot.compile import compile_for

    s = parse_slice("v5e:2x2")
    devices = s.devices()

    def report(batch: int, remat: str = "none") -> dict:
        config = tiny({"fsdp": 4}, "fsdp", remat=remat, n_layers=4)
        with config.unlocked():
            config.data.batch_size = batch
            config.data.seq_len = 256
            config.model.causal_blocks = 1  # FLOPs against the formula, which counts every key
        return compile_for(config, s, devices=devices, eval_step=False)

    small = report(8)["memory"]["temp_bytes"]
    large = report(32)["memory"]["temp_bytes"]
    full_remat = report(32, "full")
    assert large > 2 * small
    assert full_remat["memory"]["temp_bytes"] < large / 2
    # Remat recomputes the forward pass: the program's FLOPs exceed the model's.
    assert full_remat["hlo_flops_per_step"] > 1.2 * full_remat["model_flops_per_step"]


@pytest.mark.slow
def test_cli_fits_json_and_does_not_fit_exit_3(capsys):
    code, out, err = _aot(
        capsys,
        "--config", "experiments/gpt.py:size=tiny", "--topology", "v5litepod-4", "--json",
        "--config.parallel.mesh.data=1", "--config.parallel.mesh.fsdp=4",
        "--config.parallel.rules=fsdp",
    )  # fmt: skip
    assert code == 0, err[-2000:]
    r = json.loads(out)
    for key in (
        "slice", "chips", "chip", "mesh", "params", "hbm_bytes_per_chip", "hbm_capacity_bytes",
        "fits", "model_flops_per_step", "hlo_flops_per_step", "collectives", "step_time_s",
        "tokens_per_s", "mfu", "compile_s",
    ):  # fmt: skip
        assert key in r, key
    assert r["chips"] == 4 and r["chip"] == "v5e" and r["fits"] and r["mesh"]["fsdp"] == 4
    assert r["eval_memory"]["total_bytes"] > 0
    # 2.1B parameters of f32 + Adam on one v5e chip (16 GiB) cannot fit: the compiler refuses.
    code, out, err = _aot(
        capsys,
        "--config", "experiments/gpt.py:size=tiny", "--topology", "v5e:1x1", "--no_eval",
        "--config.model.d_model=4096", "--config.model.n_heads=32", "--config.model.n_layers=10",
        "--config.model.d_ff=16384", "--config.model.layer_loop=scan",
    )  # fmt: skip
    assert code == 3, err[-2000:]
    assert "DOES NOT FIT" in out and "RESOURCE_EXHAUSTED" in out
