"""The RLHF study's stages that are not training (experiments/rlhf.py): graded pairs and the
held-out comparison of every policy (the reward model's check: reward_eval.py; the report:
rlhf_report.py).
Each is deterministic given the checkpoints it reads; process 0 writes the files.
"""

import jax

from models import get_model
from prefs.heads import VALUE_HEAD
from prefs.rlhf_report import POLICIES, plot_scores
from train.checkpoint import load_params


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
