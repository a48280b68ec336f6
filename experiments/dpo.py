r"""Pre-training, instruction tuning, then DPO with `ast.parse` as the judge: one resumable study.

  python launch/run.py --config experiments/dpo.py --workdir runs/dpo
  python launch/run.py --config experiments/dpo.py:pre_steps=240,sft_steps=150,steps=60 \
      --workdir runs/dpo_short

Stages (studies/stages.py; a rerun skips finished stages and resumes an interrupted run):
  pretrain  run     experiments/gpt.py's model and schedule (`size`) on the stdlib corpus
  sft       run     experiments/sft.py's instruction tuning from `pretrain` (init_from)
  pairs     action  `samples` SFT completions of each of `prompts` train-split function headers;
                    a body that parses paired with one that does not (same prompt), scored once
                    by the frozen SFT model -> pairs/pairs.json
  dpo       run     from `sft`, `steps` updates of `batch` pairs with the DPO recipe
                    (prefs/recipe.py); `eval_percent` of the pair prompts are held out
  heldout   action  SFT vs DPO: `heldout_samples` judged completions of each of the first
                    `heldout` validation-split headers, same settings and keys
report.md gives the fraction of held-out completions that parse for each model.

Arguments: size (the model of every stage), pre_steps, sft_steps, steps, lr, batch, and every
`dpo` field (prefs/recipe.py) by its name, heldout, max_new and max_prompt standing for
heldout_prompts, max_new_tokens and max_prompt_tokens (pairs=: rescore an earlier pairs.json).
Any field is overridable (`--config.dpo.beta=...`). Cost at the defaults: docs/preference.md.
"""

import os

import ml_collections

from experiments import gpt, sft
from experiments.common import base_config, parse_arg
from prefs.recipe import default_dpo_config
from studies.stages import Stage, stage_dir

# Arguments with shorter names than their `dpo` fields; every other field is its own argument.
_SHORT = {
    "heldout_prompts": "heldout",
    "max_new_tokens": "max_new",
    "max_prompt_tokens": "max_prompt",
}


def get_config(arg: str = ""):
    d = default_dpo_config()
    d.heldout_prompts = 64
    defaults = {_SHORT.get(k, k): v for k, v in d.items()}
    args = parse_arg(
        arg, size="tiny", pre_steps=600, sft_steps=300, steps=60, lr=1e-4, batch=16, **defaults
    )
    for k in d:
        d[k] = args[_SHORT.get(k, k)]
    pre = gpt.get_config(f"size={args.size},steps={args.pre_steps}")
    tuned = sft.get_config(f"size={args.size},steps={args.sft_steps}")
    config = ml_collections.ConfigDict()
    config.kind, config.seed = "study", args.seed
    config.model = pre.model  # one architecture for every stage
    config.data = pre.data  # pre-training's; the later stages keep its tokenizer and data_dir
    config.pretrain = pre.train
    config.sft = dict(
        train=tuned.train, seq_len=tuned.data.seq_len, batch_size=tuned.data.batch_size
    )
    policy = base_config(args.size).train
    policy.steps, policy.lr, policy.warmup_steps = args.steps, args.lr, max(args.steps // 10, 1)
    policy.schedule, policy.weight_decay, policy.log_every = "constant", 0.0, 10
    policy.eval_every, policy.ckpt_every = args.steps, max(args.steps // 5, 1)
    config.policy = {"train": policy, "batch_size": args.batch}
    config.dpo = d
    return config


def stage_run(config, data, train, init_from: str = ""):
    """A stage's run config: the study's model and seed, `data` and `train` (experiments/rlhf.py
    builds its stages with it too)."""
    run = base_config()
    run.seed, run.init_from, run.model = config.seed, init_from, config.model
    run.data, run.train = data, train
    return run.copy_and_resolve_references()


def instructions_data(config, seq_len: int, batch_size: int):
    """The study's data block on the instruction pairs, rows of `seq_len`."""
    data = config.data.copy_and_resolve_references()
    data.update(source="instructions", dataset="stdlib", glob="", seq_len=seq_len)
    data.batch_size = batch_size
    return data


def stage_configs(config, workdir: str) -> dict:
    """The run configs of the `pretrain`, `sft` and `dpo` stages of the study in `workdir`."""
    pre = stage_run(config, config.data, config.pretrain)
    tuned = stage_run(
        config,
        instructions_data(config, config.sft.seq_len, config.sft.batch_size),
        config.sft.train,
        init_from=stage_dir(workdir, "pretrain"),
    )
    d = config.dpo
    policy = stage_run(
        config,
        instructions_data(
            config, d.max_prompt_tokens + d.max_new_tokens + 1, config.policy.batch_size
        ),
        config.policy.train,
        init_from=stage_dir(workdir, "sft"),
    )
    policy.dpo = d
    policy = policy.copy_and_resolve_references()
    policy.dpo.pairs = f"{stage_dir(workdir, 'pairs')}/pairs.json"
    return {"pretrain": pre, "sft": tuned, "dpo": policy}


def get_stages(config, workdir: str) -> list[Stage]:
    from prefs.study import compare, make_pairs

    c = stage_configs(config, workdir)
    sft_dir, dpo_dir = stage_dir(workdir, "sft"), stage_dir(workdir, "dpo")

    def pairs(here: str, rows: dict) -> dict:
        return make_pairs(c["dpo"], sft_dir, f"{here}/pairs.json", reuse=config.dpo.pairs)

    def heldout(here: str, rows: dict) -> dict:
        return compare(c["dpo"], {"sft": sft_dir, "dpo": dpo_dir})

    return [
        Stage("pretrain", config=c["pretrain"]),
        Stage("sft", config=c["sft"]),
        Stage("pairs", action=pairs),
        Stage("dpo", config=c["dpo"]),
        Stage("heldout", action=heldout),
    ]


def report(config, rows: dict) -> str:
    from prefs.study import report_table

    held, p, tuned, policy = rows["heldout"], rows["pairs"], rows["sft"], rows["dpo"]
    pool, d = p["pool"], config.dpo
    load = os.getloadavg()
    return "\n".join(
        [
            report_table(held),
            "",
            f"Pairs: {p['pairs']} from {p['pair_prompts']} train prompts x {d.samples} SFT "
            f"samples ({pool['parse_fraction']:.3f} of them parse), {p['eval_pairs']} held out; "
            f"beta {d.beta}, {config.policy.train.steps} steps of {config.policy.batch_size} pairs "
            f"at lr {config.policy.train.lr}; temperature {d.temperature}, top_k {d.top_k}, "
            f"top_p {d.top_p}, at most {d.max_new_tokens} new tokens.",
            f"DPO held-out pairs: loss {policy['eval/loss']:.4f}, accuracy "
            f"{policy['eval/accuracy']:.3f}, reward margin {policy['eval/reward_margin']:.3f}. "
            f"SFT held-out loss {tuned['eval/loss']:.4f} nats/token "
            f"({tuned['eval/bits_per_byte']:.4f} bits/byte on the response tokens).",
            "Wall time (s): "
            + ", ".join(f"{k} {v['stage_wall_s']:.0f}" for k, v in rows.items())
            + f"; load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}.",
        ]
    )
