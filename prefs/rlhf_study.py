"""The RLHF study's stages that are not training (experiments/rlhf.py): graded pairs, the reward
model's held-out check, the held-out comparison of every policy (the report: rlhf_report.py).
Each is deterministic given the checkpoints it reads; process 0 writes the files.
"""

import json
import zlib

import jax
import numpy as np

from common import atomic
from data.pipeline import tokenizer_from_config
from models import get_model
from prefs import pairs
from prefs.heads import SCORE_HEAD, VALUE_HEAD, WithHead
from prefs.reward_loss import make_score_fn
from prefs.rlhf_report import POLICIES, plot_scores
from train.checkpoint import load_params
from train.validate import ConfigError


def graded_pairs(prompts: list[dict], verdicts: list[list[dict]], min_gap: float) -> list[dict]:
    """`{'id', 'prompt', 'chosen', 'rejected', 'gap'}`: per prompt, its distinct bodies sorted by
    the graded judge's score, the i-th best paired with the i-th worst while their scores differ
    by at least `min_gap`."""
    out = []
    for prompt, vs in zip(prompts, verdicts, strict=True):
        by_body = {v["body"]: v["score"] for v in vs}
        ranked = sorted(by_body, key=lambda b: (-by_body[b], b))
        for i in range(len(ranked) // 2):
            hi, lo = ranked[i], ranked[-1 - i]
            gap = by_body[hi] - by_body[lo]
            if gap < min_gap:
                break
            out.append(
                {"id": prompt["id"], "prompt": prompt["tokens"], "chosen": hi, "rejected": lo}
                | {"gap": gap}
            )
    return out


def _first_is_chosen(pair: dict, i: int) -> bool:
    """The order a held-out pair is shown in (a fixed coin per pair)."""
    return zlib.crc32(f"{pair['id']}:{i}".encode()) % 2 == 0


def calibration(p_first: np.ndarray, y_first: np.ndarray, bins: int = 10) -> dict:
    """Expected calibration error and the bins (count, mean predicted, observed frequency) of
    predicted P(first preferred) against the judge's labels."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(p_first, edges[1:-1]), 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            mean_p, freq = float(p_first[sel].mean()), float(y_first[sel].mean())
            ece += sel.mean() * abs(mean_p - freq)
            rows.append({"bin": b, "count": int(sel.sum()), "predicted": mean_p, "observed": freq})
    return {"ece": float(ece), "bins": rows}


def reward_eval(config, rm_dir: str, pairs_path: str) -> dict:
    """The `reward_eval` stage: the reward model on the held-out pairs against the judge:
    pairwise accuracy, the majority baseline (the better constant answer 'first' or 'second'
    with each pair shown in a fixed random order), a length baseline (the longer body wins,
    ties half) and calibration of sigmoid(r_first - r_second)."""
    tok, mcfg, B = tokenizer_from_config(config.data), config.model, config.data.batch_size
    held = [
        p
        for p in json.loads(atomic.read_text(pairs_path))["pairs"]
        if pairs.is_held_out(p["id"], config.reward.eval_percent)
    ]
    if not held:
        raise ConfigError("reward.eval_percent leaves no held-out pair; raise it")
    arrays = pairs.stack_pairs(tok, held, config.data.seq_len)
    model = WithHead(get_model(mcfg.family), SCORE_HEAD)
    score = jax.jit(make_score_fn(model.outputs, mcfg))
    params, n = load_params(rm_dir), len(held)
    r = {}
    for s in ("chosen", "rejected"):
        got = []
        for start in range(0, n, B):
            idx = np.minimum(np.arange(start, start + B), n - 1)
            rows = {k: arrays[f"{s}_{k}"][idx] for k in ("tokens", "segment_ids", "positions")}
            got.append(np.asarray(score(params, rows))[: n - start])
        r[s] = np.concatenate(got)
    first = np.array([_first_is_chosen(p, i) for i, p in enumerate(held)])
    margin = np.where(first, r["chosen"] - r["rejected"], r["rejected"] - r["chosen"])
    p_first = 1.0 / (1.0 + np.exp(-margin))
    lengths = {s: np.array([len(p[s]) for p in held]) for s in ("chosen", "rejected")}
    longer = np.where(
        lengths["chosen"] == lengths["rejected"], 0.5, lengths["chosen"] > lengths["rejected"]
    )
    return {
        "eval_pairs": n,
        "accuracy": float((r["chosen"] > r["rejected"]).mean()),
        "majority_baseline": float(max(first.mean(), 1 - first.mean())),
        "length_baseline": float(longer.mean()),
        **calibration(p_first, first.astype(np.float64)),
    }


def compare(rollouts, dirs: dict[str, str], seed: int) -> dict[str, dict]:
    """`{name: held-out means}` (prefs/rl_source.py `Rollouts.evaluate`) of every policy in
    `dirs` (name -> workdir), sampled with the same settings and keys (`seed`)."""
    from prefs.rl_source import place

    run = rollouts.run
    model = get_model(run.config.model.family)
    out = {}
    for name, workdir in dirs.items():
        params = {k: v for k, v in load_params(workdir).items() if k != VALUE_HEAD}
        with run.activate():
            placed = place(run, model, run.config.model, params)
            out[name] = rollouts.evaluate(placed, seed)
    return out


def heldout_stage(configs: dict, workdir: str, seeds, here: str) -> dict:
    """The `heldout` stage: `compare` of SFT, DPO, PPO and GRPO for every seed (the seed's
    sampling keys; SFT sampled once per seed), under the GRPO run's tokenizer, prompts, frozen
    reference and reward model; plots the RL runs' critic vs judge curves beside it."""
    from prefs.rl_recipe import recipe
    from prefs.rl_source import Rollouts
    from train.loop import Run
    from train.metrics import read_metrics

    first = configs[f"grpo_{seeds[0]}"]
    rollouts = Rollouts(Run(first, recipe=recipe(first)))
    per_seed, curves = {}, {}
    for s in seeds:
        dirs = {"sft": f"{workdir}/sft"} | {n: f"{workdir}/{n}_{s}" for n in POLICIES[1:]}
        per_seed[str(s)] = compare(rollouts, dirs, s)
        sft = per_seed[str(s)]["sft"]  # step 0: the probe's keys are the seed's, so this is it
        start = {
            "step": 0,
            "eval/rm_score": sft["rm_score"],
            "eval/judge_score": sft["judge_score"],
        }
        for n in ("ppo", "grpo"):
            curves[f"{n}_{s}"] = [start, *read_metrics(f"{workdir}/{n}_{s}/metrics.jsonl")]
    plot = f"{workdir}/rlhf_scores.png"
    if jax.process_index() == 0:
        plot_scores(curves, plot)
    return {"per_seed": per_seed, "plot": plot}
