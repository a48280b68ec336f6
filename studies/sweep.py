"""The sweep runner: expand an experiment's grid, train every point, record it, fit and report.

`launch/run.py` calls `run_sweep` for configs that carry a `sweep` block (experiments/scaling.py).
The sweep workdir (local or remote: `gs://...`, every file through common/atomic.py) holds:
  config.json          the sweep config (a rerun with another config is refused)
  results.jsonl        one line per point, rewritten atomically after each point
  points/<id>/         each point's own run directory (config, metrics, checkpoints, summary)
  trunks/<size>/       schedule=wsd: the warmup-stable run the cooldown branches start from
  fit.json, report.md, *.png   from scaling.fit.analyze once enough points are done
  verify/                      sweep.verify=K: prediction.json (written before its run starts),
                               run/ (the run beyond the grid), result.json (once it finished)

Rerunning the same command skips points already in results.jsonl with status "ok", retries failed
ones, and resumes an interrupted point (or trunk) from its newest checkpoint, so a sweep killed at
any moment finishes with exactly one result per point and the numbers of an uninterrupted sweep.
"""

import dataclasses
import importlib.util
import json
import os
import platform
import sys
import time
import traceback

import jax

from common import atomic
from models.sizes import resolved_dims
from studies.recipes import recipe_for
from train import preemption
from train.checkpoint import latest_step
from train.loop import ConfigError, claim_workdir, train_and_evaluate, validate
from train.optim import wsd_decay_start
from train.perf import measure_peak_flops

# Per-run cost not proportional to steps (build, compile, eval), for the ETA before any is measured.
_OVERHEAD_S = 6.0
# Fraction of the measured matmul peak a train step reaches, for the estimate before measuring.
_EFFICIENCY = 0.7


@dataclasses.dataclass
class Piece:
    """One call of `train_and_evaluate`: a point, or a WSD trunk segment up to a branch point."""

    kind: str  # 'run' (a point trained from scratch), 'trunk' or 'branch'
    config: object
    workdir: str
    steps: int  # steps this piece trains (for the ETA)
    size: str
    point: dict | None = None  # the point a 'run' or 'branch' produces
    stop_at: int | None = None
    init_from: tuple[str, int] | None = None
    keep_steps: tuple[int, ...] = ()
    trunk: str | None = None  # the trunk workdir a 'branch' starts from


def load_experiment(path: str):
    """Imports an experiment file by path (for its `get_sweep`)."""
    spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def plan(config, points: list[dict], point_config, workdir: str) -> list[Piece]:
    """The runs that produce `points`, in order: per size, trunk segments and their branches."""
    pieces = []
    by_size: dict[str, list[dict]] = {}
    for p in points:
        by_size.setdefault(f"L{p['n_layers']}xD{p['d_model']}", []).append(p)
    for size, pts in by_size.items():
        pts = sorted(pts, key=lambda p: p["steps"])
        if config.sweep.schedule == "cosine":
            for p in pts:
                c = point_config(config, p)
                pieces.append(Piece("run", c, _point_dir(workdir, p), p["steps"], size, point=p))
            continue
        branches = [point_config(config, p) for p in pts]
        forks = [wsd_decay_start(c.train) for c in branches]
        trunk = _trunk_config(branches[-1], max(forks))
        trunk_dir = os.path.join(workdir, "trunks", size)
        done = 0
        for p, c, fork in zip(pts, branches, forks, strict=True):
            c.train.decay_start = fork
            c.train.ckpt_every = max((p["steps"] - fork) // 2, 1)  # a mid-branch checkpoint
            if fork > done:
                pieces.append(
                    Piece(
                        "trunk",
                        trunk,
                        trunk_dir,
                        fork - done,
                        size,
                        stop_at=fork,
                        keep_steps=tuple(forks),
                    )
                )
                done = fork
            pieces.append(
                Piece(
                    "branch",
                    c,
                    _point_dir(workdir, p),
                    p["steps"] - fork,
                    size,
                    point=p,
                    init_from=(os.path.join(trunk_dir, "checkpoints"), fork),
                    trunk=trunk_dir,
                )
            )
    return pieces


def _trunk_config(branch_config, steps: int):
    """The warmup-stable run every branch of one size starts from: constant lr after warmup."""
    c = branch_config.copy_and_resolve_references()
    c.train.schedule = "constant"
    c.train.decay_start = -1
    c.train.steps = steps
    c.train.eval_every = steps
    c.train.ckpt_every = max(steps // 8, 1)
    return c


def _point_dir(workdir: str, point: dict) -> str:
    return os.path.join(workdir, "points", point["id"])


def _row(config, point: dict, status: str, **extra) -> dict:
    keys = ("id", "n_layers", "d_model", "n_heads", "params", "params_total", "tokens", "steps")
    row = {k: point[k] for k in keys}
    row.update(
        family=config.model.family,
        objective=config.objective,
        tokenizer=config.data.tokenizer,
        params_non_embedding=point["params"],
        flops=point["flops"],
        flops_per_token=point["flops_per_token"],
        budget=point["budget"],
        grid=point["grid"],
        schedule=config.sweep.schedule,
        lr=point["lr"],
        seed=config.seed,
        status=status,
    )
    row.update(extra)
    return row


def _fmt_s(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


class _Clock:
    """Seconds per step per model size (estimated, then measured) for the sweep ETA."""

    def __init__(self, config, points: list[dict]):
        self.peak = measure_peak_flops()
        tokens_per_step = config.data.batch_size * config.data.seq_len
        self.per_step = {}
        for p in points:
            size = f"L{p['n_layers']}xD{p['d_model']}"
            flops = p["flops_per_token"] * tokens_per_step
            self.per_step[size] = 0.01 * config.train.grad_accum + flops / (_EFFICIENCY * self.peak)
        self.measured: set[str] = set()

    def estimate(self, piece: Piece) -> float:
        return _OVERHEAD_S + piece.steps * self.per_step[piece.size]

    def observe(self, piece: Piece, summary: dict, wall_s: float) -> None:
        steps = summary.get("step", 0) - summary.get("resumed_from", 0)
        if steps > 20:
            self.per_step[piece.size] = max(wall_s - _OVERHEAD_S, 0.0) / steps
            self.measured.add(piece.size)


def print_grid(config, points: list[dict], pieces: list[Piece], clock: _Clock) -> None:
    """The grid with N, D, FLOPs and the estimated cost, as `--dry_run` shows it."""
    s = config.sweep
    print(
        f"sweep: preset={s.preset} schedule={s.schedule} mode={s.mode} family="
        f"{config.model.family}; {len(points)} points over {len(s.ladder)} sizes"
    )
    header = (
        f"{'id':<18} {'L':>2} {'d_model':>7} {'N non-emb':>10} {'N total':>10} "
        f"{'D tokens':>11} {'steps':>6} {'C FLOPs':>9} {'IsoFLOP C':>9} {'lr':>8}"
    )
    print(header)
    print("-" * len(header))
    for p in points:
        budget = f"{p['budget']:.2g}" if p["budget"] else "-"
        print(
            f"{p['id']:<18} {p['n_layers']:>2} {p['d_model']:>7} {p['params']:>10,} "
            f"{p['params_total']:>10,} {p['tokens']:>11,} {p['steps']:>6} {p['flops']:>9.2e} "
            f"{budget:>9} {p['lr']:>8.2e}"
        )
    trained = sum(pc.steps for pc in pieces) * config.data.batch_size * config.data.seq_len
    scratch = sum(p["tokens"] for p in points)
    total = sum(clock.estimate(pc) for pc in pieces)
    how = (
        "one warmup-stable trunk per size, a cooldown branch per point"
        if s.schedule == "wsd"
        else "one cosine run per point"
    )
    print(
        f"cost: {len(pieces)} runs ({how}); {trained:,} tokens trained "
        f"(training every point from scratch: {scratch:,}); "
        f"{sum(p['flops'] for p in points):.2e} FLOPs summed over points; "
        f"estimated {_fmt_s(total)} on this machine ({jax.device_count()} "
        f"{jax.devices()[0].platform} device(s), measured matmul peak "
        f"{clock.peak / 1e9:.0f} GFLOP/s per device)"
    )
    if s.verify:
        print(
            f"verify: after the fit, one more run of the rung after L{max(s.ladder)} that spends "
            f"{s.verify} x the largest C (not in the estimate)"
        )


def check_points(config, points: list[dict], point_config) -> None:
    """Fails with ConfigError before anything runs if a point's config cannot run."""
    if not points:
        raise ConfigError("the sweep has no points; check sweep.ladder, sweep.tokens, sweep.mode")
    ids = [p["id"] for p in points]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"sweep point ids are not unique: {sorted(ids)}")
    for p in points:
        c = point_config(config, p)
        try:
            validate(c)
            resolved_dims(c.model)
        except ValueError as e:
            raise ConfigError(f"sweep point {p['id']}: {e}") from e


def run_sweep(config, experiment: str, workdir: str, *, dry_run: bool = False) -> dict:
    """Runs (or with `dry_run`, only prints) the sweep of `config`; returns the fit (or {})."""
    module = load_experiment(experiment)
    points = module.get_sweep(config)
    check_points(config, points, module.point_config)
    only = [s for s in config.sweep.get("only", "").split(",") if s]
    if only:  # one job of a sweep spread over a cluster: its points, no fit
        unknown = sorted(set(only) - {p["id"] for p in points})
        if unknown:
            raise ConfigError(f"sweep.only names unknown points {unknown}")
        points = [p for p in points if p["id"] in only]
        shared = config.copy_and_resolve_references()
        shared.sweep.only = ""
    pieces = plan(config, points, module.point_config, workdir)
    clock = _Clock(config, points)
    is_main = jax.process_index() == 0
    if is_main:
        print_grid(config, points, pieces, clock)
    if dry_run:
        return {}

    claim_workdir(workdir, shared if only else config, "sweep", write=is_main)
    # Concurrent jobs must not rewrite one file: each keeps its own rows; the final job (the
    # sweep without `only`) finds their finished points and fits.
    results_path = os.path.join(workdir, f"results.{only[0]}.jsonl" if only else "results.jsonl")
    results = atomic.read_rows(results_path)
    done = {i for i, r in results.items() if r.get("status") == "ok"}
    if done:
        print(f"sweep: {len(done)} of {len(points)} points already done in {workdir}")

    with preemption.active() as guard:
        return _run_pieces(
            config,
            experiment,
            workdir,
            points,
            pieces,
            clock,
            results,
            done,
            guard,
            results_path=results_path,
            fit=not only,
        )


def _run_pieces(
    config, experiment, workdir, points, pieces, clock, results, done, guard, *, results_path, fit
) -> dict:
    """Trains the pieces still needed, recording each point in `results_path`, then fits unless
    `fit` is False (one cluster job's share); stops early on a preemption signal."""
    is_main = jax.process_index() == 0
    t0 = time.perf_counter()
    broken: dict[str, str] = {}  # trunk dir -> error, for the branches that need it
    order = [pc.point["id"] for pc in pieces if pc.point is not None]
    for i, piece in enumerate(pieces):
        if not _needed(piece, pieces[i:], done):
            continue
        if guard.signum is not None:  # a signal between two runs: nothing in flight to save
            print("sweep: preempted between points; rerun the same command to resume")
            return {"preempted": True}
        remaining = sum(
            clock.estimate(pc)
            for j, pc in enumerate(pieces[i:], i)
            if _needed(pc, pieces[j:], done, cheap=True)
        )
        label = piece.point["id"] if piece.point else f"{piece.size} trunk"
        if is_main:
            n = order.index(piece.point["id"]) + 1 if piece.point else None
            which = f"point {n}/{len(order)}" if n else f"trunk to step {piece.stop_at}"
            print(
                f"== sweep {len(done)}/{len(points)} done | {which}: {label} | "
                f"elapsed {_fmt_s(time.perf_counter() - t0)} | eta {_fmt_s(remaining)}",
                flush=True,
            )
        if piece.kind == "branch" and piece.trunk in broken:
            results[piece.point["id"]] = _row(
                config, piece.point, "failed", error=f"trunk failed: {broken[piece.trunk]}"
            )
            if is_main:
                atomic.write_rows(results_path, results)
            continue
        t = time.perf_counter()
        try:
            summary = train_and_evaluate(
                piece.config,
                piece.workdir,
                stop_at=piece.stop_at,
                init_from=piece.init_from,
                keep_steps=piece.keep_steps,
                desc=label,
                recipe=recipe_for(piece.config),
            )
        except ConfigError:
            raise
        except Exception as e:  # a point that fails is recorded and the sweep goes on
            error = f"{type(e).__name__}: {e}".splitlines()[0]
            traceback.print_exc(file=sys.stderr)
            print(f"sweep: {label} failed ({error}); going on", file=sys.stderr, flush=True)
            if piece.kind == "trunk":
                broken[piece.workdir] = error
            else:
                results[piece.point["id"]] = _row(config, piece.point, "failed", error=error)
                if is_main:
                    atomic.write_rows(results_path, results)
            continue
        wall = time.perf_counter() - t
        if summary.get("preempted"):  # its checkpoint is saved; a rerun resumes this piece
            print(f"sweep: preempted in {label}; rerun the same command to resume")
            return {"preempted": True}
        clock.observe(piece, summary, wall)
        if piece.point is None:
            continue
        results[piece.point["id"]] = _row(
            config,
            piece.point,
            "ok",
            loss=summary["eval/loss"],
            bits_per_byte=summary["eval/bits_per_byte"],
            wall_s=wall,
            compile_s=summary["compile_s"],
            fork_step=piece.init_from[1] if piece.init_from else None,
        )
        done.add(piece.point["id"])
        if is_main:
            atomic.write_rows(results_path, results)

    ok = [r for r in results.values() if r.get("status") == "ok" and r["id"] in set(order)]
    failed = len(points) - len(ok)
    print(
        f"sweep: {len(ok)}/{len(points)} points ok, {failed} failed, "
        f"{_fmt_s(time.perf_counter() - t0)} in this session; results in {results_path}"
    )
    if not is_main or not fit:
        return {}
    rows = [results[i] for i in order if i in results]
    verification = None
    if config.sweep.verify:
        verification = _verify(config, experiment, workdir, rows)
        if verification.get("preempted"):
            return verification
    return _analyze(config, experiment, workdir, rows, verification)


def _verify(config, experiment: str, workdir: str, rows: list[dict]) -> dict:
    """The pre-registered prediction (`sweep.verify`): predict, write, train, score.

    verify/prediction.json is written (atomically) before the run starts and never rewritten,
    so the score is always against the prediction made in advance; verify/run/ is an ordinary
    run directory (an interrupted run resumes from its checkpoint); verify/result.json marks a
    finished run, which a rerun never trains again.
    """
    from scaling import verify
    from scaling.rows import InputError, to_points

    s = config.sweep
    vdir = os.path.join(workdir, "verify")
    prediction_path = os.path.join(vdir, "prediction.json")
    result_path = os.path.join(vdir, "result.json")
    if atomic.exists(prediction_path):
        prediction = json.loads(atomic.read_text(prediction_path))
    else:
        try:
            points = to_points(rows)
        except InputError as e:
            print(f"sweep: no verification run: {e}")
            return {"reason": str(e)}
        module = load_experiment(experiment)
        rung = module.verify_point(config, 1)
        tokens, how = verify.target_tokens(points, s.verify, rung["flops_per_token"])
        run = module.verify_point(config, tokens)
        prediction = verify.predict(
            points, run, factor=s.verify, n_bootstrap=s.bootstrap, seed=s.seed
        )
        prediction["tokens_rule"] = how
        atomic.makedirs(vdir)
        atomic.write_json(prediction_path, prediction)
        forms = ", ".join(f"{name} {f['predicted']:.4f}" for name, f in prediction["forms"].items())
        print(f"sweep: predicted {run['id']} ({how}): {forms}; in {prediction_path}")
    if atomic.exists(result_path):
        measured = json.loads(atomic.read_text(result_path))
    else:
        run = prediction["run"]
        c = load_experiment(experiment).point_config(config, run)
        print(f"== sweep verification run: {run['id']} ({run['steps']} steps)", flush=True)
        t = time.perf_counter()
        summary = train_and_evaluate(
            c, os.path.join(vdir, "run"), desc=f"verify {run['id']}", recipe=recipe_for(c)
        )
        if summary.get("preempted"):
            print("sweep: preempted in the verification run; rerun the same command to resume")
            return {"preempted": True}
        measured = {
            "id": run["id"],
            "loss": summary["eval/loss"],
            "bits_per_byte": summary["eval/bits_per_byte"],
            "wall_s": time.perf_counter() - t,
        }
        atomic.write_json(result_path, measured)
    return verify.score(prediction, measured)


def _needed(piece: Piece, rest: list[Piece], done: set[str], cheap: bool = False) -> bool:
    """Whether `piece` still has work: its point is not done, or a later branch needs the trunk.

    `cheap` skips looking at checkpoints (for the ETA, which only needs an estimate).
    """
    if piece.kind != "trunk":
        return piece.point["id"] not in done
    branches = [pc for pc in rest if pc.kind == "branch" and pc.trunk == piece.workdir]
    pending = [pc for pc in branches if pc.point["id"] not in done]
    if not pending or cheap:
        return bool(pending)
    trunk_at = latest_step(os.path.join(piece.workdir, "checkpoints")) or 0
    return trunk_at < piece.stop_at and not atomic.isdir(
        os.path.join(pending[0].workdir, "checkpoints")
    )


def _analyze(
    config, experiment: str, workdir: str, rows: list[dict], verification: dict | None = None
) -> dict:
    """Fits the laws and writes fit.json, the plots and report.md (skipped with < 5 points);
    `verification` (the scored verify run, if any) goes into both."""
    from scaling.fit import analyze

    ok = [r for r in rows if r.get("status") == "ok"]
    if len(ok) < 5:
        print(f"sweep: only {len(ok)} points ok; need 5 to fit, skipping the fit and report")
        return {}
    s = config.sweep
    schedule = (
        f"warmup-stable-decay with cooldown branches (Hägele et al. 2024): one constant-lr run per "
        f"size after {config.train.warmup_steps} warmup steps; each point branches off it and "
        f"cools down over the last {config.train.decay_fraction:.0%} of its steps "
        f"({config.train.decay_shape} shape, to zero)"
        if s.schedule == "wsd"
        else "one cosine run per point from scratch (Chinchilla approach 1 standard), "
        f"{config.train.warmup_steps} warmup steps, decay to "
        f"{config.train.min_lr_ratio:g} x peak"
    )
    meta = {
        "title": f"Scaling sweep: {config.model.family} on {config.data.dataset}",
        "command": " ".join(sys.argv) or f"launch/run.py --config {experiment}",
        "schedule": schedule,
        "grid": {
            "preset": s.preset,
            "mode": s.mode,
            "ladder (layers)": list(s.ladder),
            "aspect (d_model per layer)": s.aspect,
            "head_dim": s.head_dim,
            "token budgets": list(s.tokens),
            "IsoFLOP budgets": list(s.budgets),
            "seq_len x batch": f"{config.data.seq_len} x {config.data.batch_size}",
            "tokenizer": config.data.tokenizer,
            "peak lr": "per size " + " / ".join(f"{lr:g}" for lr in s.lrs)
            if s.get("lrs")
            else f"{s.lr:g} x ({s.lr_base_width} / d_model)^{s.lr_width_exponent:g}",
        },
        "machine": f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPU cores, "
        f"{jax.device_count()} {jax.devices()[0].platform} device(s), jax {jax.__version__}",
        "n_parameter_definition": "non-embedding (parameters of the Transformer blocks)",
        "loss": f"held-out loss in nats per {config.data.tokenizer} token (final evaluation of "
        "each point); the runs table's bits per byte compare across tokenizers",
    }
    t = time.perf_counter()
    fit = analyze(
        rows, workdir, n_bootstrap=s.bootstrap, seed=s.seed, meta=meta, verification=verification
    )
    print(f"sweep: fit, plots and report in {time.perf_counter() - t:.0f} s")
    keys = ("E", "A", "B", "alpha", "beta", "a", "b")
    print("fit: " + ", ".join(f"{k}={fit[k]:.4g}" for k in keys if fit.get(k) is not None))
    print(f"report: {os.path.join(workdir, 'report.md')}")
    return fit
