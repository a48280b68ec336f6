r"""RLHF with a separately trained critic: pre-train, SFT, graded pairs, a reward model, then PPO
and the group-relative GRPO against it, beside DPO on the same pairs; one resumable study.

  python launch/run.py --config experiments/rlhf.py:preset=smoke --workdir runs/rlhf_smoke
  python launch/run.py --config experiments/rlhf.py --workdir runs/rlhf

Stages (studies/stages.py; a rerun skips finished stages and resumes an interrupted run):
  pretrain, sft   run     as experiments/dpo.py
  pairs           action  `samples` SFT completions of each of `prompts` train-split headers,
                          graded by the judge (prefs/judge.py `grade`); per prompt the i-th best
                          paired with the i-th worst when their scores differ by `min_gap`;
                          scored by the SFT model (DPO's reference) -> pairs/pairs.json
  reward          run     the reward model: SFT trunk + scalar head, Bradley-Terry on the pairs
  reward_eval     action  its held-out pairwise accuracy vs the judge, baselines, calibration
  dpo_<s>         run     DPO on the same pairs (seed s), as experiments/dpo.py's dpo stage
  ppo_<s>         run     PPO against the reward model, KL penalty to the SFT model (seed s)
  grpo_<s>        run     GRPO: `group` samples per prompt, no value head (seed s)
  heldout         action  SFT, DPO, PPO, GRPO on the same held-out prompts, same sampling
                          settings and keys per seed: true judge score, reward-model score, KL
                          to SFT, length; report.md gives mean ± std over seeds, and
                          rlhf_scores.png the critic vs the judge over RL steps
Seeds s = 0 .. seeds-1; the pre-training, SFT and reward model are shared.

Arguments: preset (smoke: a 1-layer model, 80 pre-training and 60 SFT steps, 4 of every other
stage; 4.7 min of stage wall time on the loaded 2-core CPU of docs/rlhf.md, whose 3-seed study
of a tiny model took 21 min),
size, pre_steps, sft_steps, dpo_steps, rm_steps, rl_steps, lr (DPO), rm_lr, rl_lr, rm_wd (the
reward model's weight decay), rm_evals and rl_evals (evaluations per run: the reward model keeps a
checkpoint at each and later stages read the one of best validation accuracy), batch, rl_batch,
seeds, min_gap, eval_percent (held-out share of the pair prompts, for DPO and the reward model),
val_percent (the reward model's validation share of the others), algo fields by name (beta,
group, epochs), and the sampling fields of the `dpo` block (prompts, samples, heldout,
heldout_samples, max_new, max_prompt, temperature);
`--config.dpo.pairs=FILE` rescores the pairs of an earlier pairs.json instead of sampling.
Any field is overridable (`--config.rl.beta=...`). docs/rlhf.md explains the table.
"""

import functools

from experiments import dpo
from experiments.common import base_config, parse_arg
from prefs.reward_recipe import default_reward_config
from prefs.rl_recipe import default_rl_config
from studies.stages import Stage, stage_dir

_PRESETS = {
    "": {},
    "smoke": dict(
        pre_steps=80,
        sft_steps=60,
        dpo_steps=4,
        rm_steps=4,
        rl_steps=4,
        batch=8,
        rl_batch=8,
        prompts=16,
        samples=8,
        heldout=4,
        heldout_samples=2,
        max_new=48,
        max_prompt=96,
        group=2,
        min_gap=0.01,
        val_percent=40,  # a few prompts: a validation split of at least one of them
        rl_evals=2,
    ),
}
_SMOKE_MODEL = dict(n_layers=1, d_model=32, n_heads=2, d_ff=64)


def _args(arg: str):
    defaults = dict(
        preset="",
        size="tiny",
        pre_steps=600,
        sft_steps=300,
        dpo_steps=60,
        rm_steps=150,
        rl_steps=60,
        lr=1e-4,
        rm_lr=3e-4,
        rm_wd=0.1,
        rm_evals=10,
        rl_lr=2e-5,
        rl_evals=4,
        batch=16,
        rl_batch=16,
        seeds=3,
        min_gap=0.1,
        eval_percent=25,
        val_percent=15,
        beta=0.05,
        group=4,
        epochs=2,
        prompts=256,
        samples=8,
        heldout=32,
        heldout_samples=2,
        max_new=96,
        max_prompt=160,
        temperature=0.8,
        seed=0,
    )
    preset = parse_arg(arg, **defaults).preset
    if preset not in _PRESETS:
        raise ValueError(f"preset={preset!r} is unknown; use one of {sorted(_PRESETS)}")
    return parse_arg(arg, **(defaults | _PRESETS[preset])), preset


def _train(size: str, steps: int, lr: float, evals: int = 2):
    t = base_config(size).train
    t.steps, t.lr, t.warmup_steps = steps, lr, max(steps // 10, 1)
    t.schedule, t.weight_decay, t.log_every = "constant", 0.0, max(min(10, steps // 2), 1)
    t.eval_every, t.ckpt_every = max(steps // evals, 1), max(steps // 4, 1)
    t.grad_accum, t.eval_batches = 1, 1
    return t


def _reward_train(a):
    """The reward model's: a checkpoint at each of `rm_evals` evaluations on the whole validation
    split, every one kept, so later stages can read the best (prefs/critic.py)."""
    t = _train(a.size, a.rm_steps, a.rm_lr, a.rm_evals)
    t.weight_decay, t.ckpt_every, t.eval_batches = a.rm_wd, t.eval_every, 1000
    t.keep_ckpts = a.rm_steps // t.eval_every + 1
    return t


def get_config(arg: str = ""):
    a, preset = _args(arg)
    config = dpo.get_config(
        f"size={a.size},pre_steps={a.pre_steps},sft_steps={a.sft_steps},steps={a.dpo_steps},"
        f"lr={a.lr},batch={a.batch},prompts={a.prompts},samples={a.samples},"
        f"heldout={a.heldout},heldout_samples={a.heldout_samples},max_new={a.max_new},"
        f"max_prompt={a.max_prompt},temperature={a.temperature},seed={a.seed},"
        f"eval_percent={a.eval_percent}"
    )
    if preset == "smoke":
        config.model.update(_SMOKE_MODEL)
        for t in (config.pretrain, config.sft.train, config.policy.train):
            t.update(grad_accum=1, eval_batches=1, warmup_steps=1)
        config.sft.batch_size = 8
    config.dpo.gen_batch = max(a.rl_batch, 8)
    config.reward_model = {"train": _reward_train(a), "batch_size": a.batch}
    config.reward = default_reward_config()
    config.reward.update(eval_percent=config.dpo.eval_percent, val_percent=a.val_percent)
    rl_train = _train(a.size, a.rl_steps, a.rl_lr, a.rl_evals)
    config.rl_policy = {"train": rl_train, "batch_size": a.rl_batch}
    rl = default_rl_config()
    rl.update(
        beta=a.beta,
        group=a.group,
        epochs=a.epochs,
        max_new_tokens=a.max_new,
        max_prompt_tokens=a.max_prompt,
        temperature=a.temperature,
        heldout_prompts=a.heldout,
        heldout_samples=a.heldout_samples,
    )
    config.rl = rl
    config.seeds, config.min_gap = a.seeds, a.min_gap
    return config


def stage_configs(config, workdir: str) -> dict:
    """The run configs of every run stage of the study in `workdir`."""
    c = dpo.stage_configs(config, workdir)
    sft_dir, pairs_path = stage_dir(workdir, "sft"), f"{stage_dir(workdir, 'pairs')}/pairs.json"
    c["dpo"].dpo.pairs = pairs_path
    d = config.dpo
    rm = dpo.stage_run(
        config,
        dpo.instructions_data(
            config, d.max_prompt_tokens + d.max_new_tokens + 1, config.reward_model.batch_size
        ),
        config.reward_model.train,
        init_from=sft_dir,
    )
    rm.reward = config.reward.copy_and_resolve_references()
    rm.reward.pairs = pairs_path
    out = {"pretrain": c["pretrain"], "sft": c["sft"], "reward": rm}
    for s in range(config.seeds):
        policy = c["dpo"].copy_and_resolve_references()
        policy.seed = s
        out[f"dpo_{s}"] = policy
        for algo in ("ppo", "grpo"):
            r = config.rl
            data = dpo.instructions_data(
                config, r.max_prompt_tokens + r.max_new_tokens, config.rl_policy.batch_size
            )
            run = dpo.stage_run(config, data, config.rl_policy.train, init_from=sft_dir)
            run.seed = s
            run.rl = r.copy_and_resolve_references()
            run.rl.update(algo=algo, reference=sft_dir, reward_model=stage_dir(workdir, "reward"))
            out[f"{algo}_{s}"] = run
    return out


def get_stages(config, workdir: str) -> list[Stage]:
    from prefs import reward_eval as critic_eval
    from prefs import rlhf_study, study

    c = stage_configs(config, workdir)
    sft_dir = stage_dir(workdir, "sft")
    seeds = range(config.seeds)

    def pairs(here: str, rows: dict) -> dict:
        path, reuse = f"{here}/pairs.json", config.dpo.pairs
        build = functools.partial(rlhf_study.graded_pairs, min_gap=config.min_gap)
        return study.make_pairs(c["dpo_0"], sft_dir, path, reuse, build)

    def reward_eval(here: str, rows: dict) -> dict:
        pairs_path = f"{stage_dir(workdir, 'pairs')}/pairs.json"
        return critic_eval.reward_eval(c["reward"], stage_dir(workdir, "reward"), pairs_path)

    def heldout(here: str, rows: dict) -> dict:
        return rlhf_study.heldout_stage(c, workdir, seeds, here)

    stages = [
        Stage("pretrain", config=c["pretrain"]),
        Stage("sft", config=c["sft"]),
        Stage("pairs", action=pairs),
        Stage("reward", config=c["reward"]),
        Stage("reward_eval", action=reward_eval),
    ]
    for s in seeds:
        stages += [Stage(f"{n}_{s}", config=c[f"{n}_{s}"]) for n in ("dpo", "ppo", "grpo")]
    return stages + [Stage("heldout", action=heldout)]


def report(config, rows: dict) -> str:
    from prefs.rlhf_report import report_text

    return report_text(config, rows)
