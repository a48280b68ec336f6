"""The RLHF study's report (experiments/rlhf.py): the held-out table (mean ± std over seeds), the
reward model against the judge, and the plot of critic vs judge score over RL steps."""

import numpy as np

from common import atomic

POLICIES = ("sft", "dpo", "ppo", "grpo")

COLUMNS = (
    ("judge_score", "true judge score"),
    ("rm_score", "reward-model score"),
    ("kl_ref", "KL to SFT (nats)"),
    ("length", "mean length (tokens)"),
)


def results_table(per_seed: dict[str, dict[str, dict]], names: tuple[str, ...]) -> str:
    """Markdown: one line per policy, each column mean ± std over the seeds of `per_seed`
    (seed -> name -> held-out means)."""
    lines = [
        "| policy | seeds | " + " | ".join(title for _, title in COLUMNS) + " |",
        "| --- | --- |" + " --- |" * len(COLUMNS),
    ]
    for name in names:
        runs = [rows[name] for rows in per_seed.values() if name in rows]
        cells = []
        for key, _ in COLUMNS:
            v = np.array([r[key] for r in runs])
            cells.append(f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.3f}")
        lines.append(f"| {name.upper()} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_scores(curves: dict[str, list[dict]], path: str) -> None:
    """Critic (reward-model) score and true judge score on held-out prompts over RL steps
    (`curves`: '<algo>_<seed>' -> metrics rows with `eval/rm_score`; one colour per algorithm,
    one marker per seed), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (critic, truth) = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    colours, markers = {}, "osd^v<>p*h"
    for name, rows in sorted(curves.items()):
        algo, seed = name.rsplit("_", 1)
        colour = colours.setdefault(algo, f"C{len(colours) % 10}")
        style = dict(color=colour, marker=markers[int(seed) % 10], label=name, alpha=0.8)
        rows = [r for r in rows if "eval/rm_score" in r]
        steps = [r["step"] for r in rows]
        critic.plot(steps, [r["eval/rm_score"] for r in rows], **style)
        truth.plot(steps, [r["eval/judge_score"] for r in rows], **style)
    critic.set(xlabel="RL step", ylabel="reward-model score", title="critic (optimised)")
    truth.set(xlabel="RL step", ylabel="graded judge score", title="true judge (held out)")
    critic.legend(fontsize=7)
    atomic.save_figure(fig, path)
    plt.close(fig)


def _ci(lo_hi) -> str:
    return f"[{lo_hi[0]:.3f}, {lo_hi[1]:.3f}]"


def reward_line(ev: dict) -> str:
    """The reward model against the judge and the baselines (prefs/reward_eval.py), 95% Wilson
    intervals in brackets."""
    return (
        f"Reward model (step {ev['rm_step']}, best validation accuracy) on {ev['eval_pairs']} "
        f"held-out pairs: accuracy {ev['accuracy']:.3f} {_ci(ev['accuracy_interval'])} against "
        f"the judge; baselines fitted on the {ev['train_pairs']} other pairs: always "
        f"'{ev['majority_answer']}' {ev['majority_baseline']:.3f} "
        f"{_ci(ev['majority_baseline_interval'])}, always the {ev['length_answer']} body "
        f"{ev['length_baseline']:.3f} {_ci(ev['length_baseline_interval'])} (the judge prefers "
        f"the shorter body in {ev['held_chosen_shorter']:.3f} of the held-out pairs; on the "
        f"{ev['chosen_longer']} where it prefers the longer one the reward model's accuracy is "
        f"{ev['accuracy_chosen_longer'] or 0:.3f}); expected calibration error {ev['ece']:.3f}."
    )


def report_text(config, rows: dict) -> str:
    """The study's report: the held-out table, the reward model against the judge, the pairs."""
    held, ev, p = rows["heldout"], rows["reward_eval"], rows["pairs"]
    rl, seeds = config.rl, len(held["per_seed"])
    bins = "\n".join(
        f"| {b['bin'] / 10:.1f}-{(b['bin'] + 1) / 10:.1f} | {b['count']} | {b['predicted']:.3f} "
        f"| {b['observed']:.3f} |"
        for b in ev["bins"]
    )
    return "\n".join(
        [
            f"Held-out: {rl.heldout_prompts} validation prompts x {rl.heldout_samples} samples, "
            f"temperature {rl.temperature}, at most {rl.max_new_tokens} new tokens, the same keys "
            f"for every policy of a seed; mean ± std over {seeds} seeds.",
            "",
            results_table(held["per_seed"], POLICIES),
            "",
            reward_line(ev),
            "",
            "| predicted P(first preferred) | pairs | mean predicted | observed |",
            "| --- | --- | --- | --- |",
            bins,
            "",
            f"Pairs: {p['pairs']} from {p['pair_prompts']} train prompts x {config.dpo.samples} "
            f"SFT samples (mean judge score {p['pool']['judge_score']:.3f}, mean gap "
            f"{p['mean_gap']:.3f}), {p['eval_pairs']} held out. RL: beta {rl.beta}, group "
            f"{rl.group}, {rl.epochs} updates per rollout, "
            f"{config.rl_policy.train.steps} steps of {config.rl_policy.batch_size} rollouts. "
            f"Critic vs judge over RL steps: {held['plot']}.",
            "Wall time (s): " + ", ".join(f"{k} {v['stage_wall_s']:.0f}" for k, v in rows.items()),
        ]
    )
