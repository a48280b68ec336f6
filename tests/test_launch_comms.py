"""launch/comms.py: HLO collectives counted with loop trip counts, and equal to the analytic
traffic of DP, FSDP, TP and PP within 10%."""

import pytest

from launch.cluster import load_config
from launch.comms import parse_hlo, report

HLO = """
%body (p: (s32[], f32[4,8])) -> (s32[], f32[4,8]) {
  %cp = f32[4,8]{1,0} collective-permute(%x), channel_id=1, source_target_pairs={{0,1},{1,0}}
  ROOT %t = (s32[], f32[4,8]) tuple(%i, %cp)
}

%cond (p: (s32[], f32[4,8])) -> pred[] {
  ROOT %lt = pred[] compare(%a, %b), direction=LT
}

ENTRY %main (a: f32[4,8]) -> f32[4,8] {
  %ar = (f32[16]{0}, bf16[2,3]{1,0}) all-reduce(%a, %b), replica_groups={{0,1,2,3}}, to_apply=%add
  %rs = f32[2,8]{1,0} reduce-scatter(%a), replica_groups=[2,4]<=[8], dimensions={0}
  %ag = (f32[1,8]{1,0}, f32[8,8]{1,0}) all-gather-start(%c), replica_groups={{0,1}}
  %w = (s32[]) while(%i), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"5"}}
  ROOT %r = f32[4,8]{1,0} copy(%a)
}
"""


def test_parse_hlo_by_hand():
    out = parse_hlo(HLO)
    assert out["all-reduce"] == {"count": 1, "bytes": 16 * 4 + 6 * 2}  # a tuple: both arrays
    assert out["reduce-scatter"] == {"count": 1, "bytes": 2 * 8 * 4 * 4}  # input = out x group 4
    assert out["all-gather"] == {"count": 1, "bytes": 8 * 8 * 4}  # the gathered result
    assert out["collective-permute"] == {"count": 5, "bytes": 5 * 4 * 8 * 4}  # x trip count
    assert "all-to-all" not in out


BASE = [
    "--config.model.n_layers=8",
    "--config.model.d_model=64",
    "--config.model.n_heads=8",
    "--config.model.d_ff=256",
    "--config.model.layer_loop=scan",
    "--config.data.seq_len=32",
    "--config.data.batch_size=16",
    "--config.train.grad_accum=1",
    "--config.train.peak_flops=1e11",
]
STRATEGIES = {
    "dp": ["--config.parallel.mesh.data=8"],
    "fsdp": ["--config.parallel.mesh.data=1", "--config.parallel.mesh.fsdp=8"],
    "tp": ["--config.parallel.mesh.data=1", "--config.parallel.mesh.tensor=8"],
    "pp": [
        "--config.parallel.mesh.data=1",
        "--config.parallel.mesh.stage=8",
        "--config.parallel.pipeline.microbatches=8",
    ],
}


@pytest.mark.slow  # four compilations of an 8-layer model
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_measured_collectives_match_analytic(strategy):
    config = load_config("experiments/gpt.py:size=tiny,runlocal", BASE + STRATEGIES[strategy])
    table, measured, expected = report(config)
    assert expected, strategy
    for kind, want in expected.items():
        got = measured.get(kind, {"bytes": 0})["bytes"]
        assert got == pytest.approx(want, rel=0.10), (kind, table)
    # Nothing big beyond what the strategy needs (loss and softmax statistics are small).
    total = sum(v["bytes"] for v in measured.values())
    assert total == pytest.approx(sum(expected.values()), rel=0.10), table
    assert "ratio" in table.splitlines()[1]
