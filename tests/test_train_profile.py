"""train/profile.py: HLO ops grouped by what they compute, and `launch/bench.py --profile`."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp

from train.profile import op_kinds

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_ops_are_grouped_into_weight_and_batched_matmuls_and_named_operations():
    def loss(w_DF, x_RD, q_BKTH):
        h_RF = jnp.tanh(x_RD @ w_DF)
        s_BKTT = jnp.einsum("bkth,bksh->bkts", q_BKTH, q_BKTH)
        return h_RF.sum() + s_BKTT.sum()

    args = (jnp.ones((8, 16)), jnp.ones((32, 8)), jnp.ones((2, 2, 4, 8)))
    hlo = jax.jit(jax.grad(loss, argnums=(0, 2))).lower(*args).compile().as_text()
    groups = set(op_kinds(hlo).values())
    assert {"weight matmuls", "batched matmuls"} <= groups
    assert any(g.endswith("(bwd)") for g in groups)  # the gradient's ops are told apart
    assert not any("%" in g or g == "" for g in groups)


def test_bench_profile_prints_where_the_step_goes():
    cmd = [
        sys.executable,
        "launch/bench.py",
        "--config",
        "experiments/gpt.py:size=tiny",
        "--config.data.batch_size=4",
        "--config.train.grad_accum=1",
        "--profile=2",
    ]
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")  # one device, as users run it
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = {
        line.split(None, 1)[1]: float(line.split()[0])
        for line in out.stdout.splitlines()
        if line[:9].strip().replace(".", "").isdigit()
    }
    assert rows["weight matmuls"] > 0 and rows["batched matmuls"] > 0
    total = next(v for k, v in rows.items() if k.startswith("sum"))
    assert total >= rows["weight matmuls"] + rows["batched matmuls"]
