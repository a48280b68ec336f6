r"""Collectives in a compiled train step, by kind, beside the analytic expectation of the strategy.

  python launch/comms.py --config=experiments/gpt.py:size=tiny --devices=8 \
      --config.parallel.mesh.data=1 --config.parallel.mesh.tensor=8 [--config.X=...]

Compiles the train step of the config on simulated CPU devices (nothing runs) and reads the
optimised HLO: every all-reduce, all-gather, reduce-scatter, collective-permute and all-to-all,
counted as often as it executes per step (ops inside `while` loops, the pipeline's iterations
and gradient accumulation, times their trip count). Bytes are per device per step, of the
*logical* buffer a collective acts on: the array reduced (all-reduce), the gathered result
(all-gather), the full input before scattering (reduce-scatter), the array sent (permute,
all-to-all). A ring implementation moves 2 (n-1)/n of that for an all-reduce and (n-1)/n for
the gathers and scatters.

The expectation (`expected`) is the textbook traffic of each strategy, with W the bytes of all
parameters, W_L of the stacked layer parameters, and A = b T D the bytes of one activation of
the b rows a device holds:
  DP    all-reduce of the gradients: W.
  FSDP  all-gather of every weight in the forward pass and again in the backward, and a
        reduce-scatter of the gradients: 2 W gathered, W scattered (XLA:CPU has no
        reduce-scatter pass and emits an all-reduce of W followed by a slice instead).
  TP    per layer two activation all-reduces forward (after attention and after the MLP) and
        four backward, one into the input of each column-split matmul (q, k, v, MLP in: the
        model keeps q, k, v apart where Megatron fuses them into one), plus the vocabulary-split
        embedding lookup and the logits' input gradient: (6 L + 2) A.
  PP    per iteration one permute of a microbatch activation forward and one backward:
        2 (R M + P - 1) A / M; the pipeline output is broadcast from stage 0 (all-reduce, A),
        and its gradient is sent back (all-reduce, A).
Small reductions (loss, token counts, softmax statistics) are listed but not expected.
"""

import argparse
import os
import sys

from aot.collectives import KINDS, parse_hlo


def expected(config, counts: dict) -> dict[str, float]:
    """Analytic bytes per device per step by kind for the strategy the mesh selects."""
    import jax

    mesh = {k: int(v) for k, v in config.parallel.mesh.items()}
    m, d = config.model, config.data
    rows = d.batch_size // max(mesh["data"] * mesh["fsdp"], 1)  # rows per device
    act = 4 * rows * d.seq_len * m.d_model  # f32 activations
    weights = 4 * counts["total"]
    active = [a for a in ("data", "fsdp", "tensor", "stage") if mesh[a] > 1]
    if active == ["data"]:
        return {"all-reduce": weights}
    if active == ["fsdp"]:
        # XLA:CPU has no reduce-scatter pass: it all-reduces the gradients and slices them.
        scatter = "all-reduce" if jax.default_backend() == "cpu" else "reduce-scatter"
        return {"all-gather": 2 * weights, scatter: weights}
    if active == ["tensor"]:
        return {"all-reduce": (6 * m.n_layers + 2) * act}
    if active == ["stage"]:
        pp = config.parallel.pipeline
        P_, M = mesh["stage"], int(pp.microbatches) or mesh["stage"]
        iters = int(pp.repeats) * M + P_ - 1
        return {"collective-permute": 2 * iters * act / M, "all-reduce": 2 * act}
    return {}


def compiled_step_hlo(config) -> str:
    """The optimised HLO text of the config's train step (compiled, not run)."""
    from train.loop import Run

    run = Run(config, synthetic_data=True, abstract=True)
    with run.activate():
        batch = run.abstract_batch()
        return run.train_step.lower(run.state, batch, run.schedule_args).compile().as_text()


def report(config) -> tuple[str, dict, dict]:
    """(printable table, measured, expected) for `config`."""
    from models.counting import count_params

    measured = parse_hlo(compiled_step_hlo(config))
    want = expected(config, count_params(config.model))
    mesh = ", ".join(f"{k}={v}" for k, v in config.parallel.mesh.items())
    lines = [
        f"mesh {mesh}; bytes per device per step",
        f"{'collective':<20}{'count':>7}{'measured':>14}{'expected':>14}{'ratio':>8}",
    ]
    for kind in KINDS:
        got = measured.get(kind, {"count": 0, "bytes": 0})
        exp = want.get(kind)
        ratio = f"{got['bytes'] / exp:.3f}" if exp else "-"
        exp_s = f"{exp:,.0f}" if exp else "-"
        lines.append(f"{kind:<20}{got['count']:>7}{got['bytes']:>14,}{exp_s:>14}{ratio:>8}")
    return "\n".join(lines), measured, want


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--devices", type=int, default=8, help="simulated CPU devices")
    args, overrides = p.parse_known_args(argv)
    if "jax" not in sys.modules:  # simulated devices must be set before JAX starts
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "")
            + f" --xla_force_host_platform_device_count={args.devices}"
        )
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from launch.cluster import load_config

    print(report(load_config(args.config, [o for o in overrides if o != "--"]))[0])


if __name__ == "__main__":
    main(sys.argv[1:])
