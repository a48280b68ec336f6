"""The DPO study's stages that are not training (experiments/dpo.py): `make_pairs` (the `pairs`
stage), `compare` (the `heldout` stage) and the report's table. Both stages are deterministic
given the checkpoints they read; every process computes them and process 0 writes pairs.json.
"""

import json
import time

import jax
import numpy as np

from common import atomic
from data.instructions import load_pairs
from data.pipeline import tokenizer_from_config
from models import get_model
from prefs import judge, pairs, sampling
from prefs.loss import make_logp_fn
from train.checkpoint import load_params
from train.validate import ConfigError


def _sync(name: str) -> None:
    if jax.process_count() > 1:  # the other hosts read what process 0 wrote
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def make_pairs(config, sft_dir: str, path: str, reuse: str = "", build=judge.build_pairs) -> dict:
    """The `pairs` stage: `dpo.samples` judged SFT completions of each of `dpo.prompts` train
    prompts, paired by `build(prompts, verdicts)` (the binary judge's pairs, or the graded ones of
    prefs/rlhf_study.py) and scored by the SFT model (the reference) -> `path`; or the pairs of the
    pairs.json `reuse`, rescored. Returns the stage's row; ConfigError if no pair is found."""
    d, tok, mcfg = config.dpo, tokenizer_from_config(config.data), config.model
    params = load_params(sft_dir)
    t = time.perf_counter()
    if reuse:  # rescored by this SFT model: the texts of another run's pairs, not its scores
        old = json.loads(atomic.read_text(reuse))
        keys = ("id", "prompt", "chosen", "rejected", "gap")
        pool, found = old["pool"], [{k: p[k] for k in keys if k in p} for p in old["pairs"]]
        prompts = len({p["id"] for p in found})
    else:
        candidates = sampling.make_prompts(
            load_pairs(config.data, "train"), tok, d.max_prompt_tokens
        )
        keep = np.random.default_rng(d.seed).permutation(len(candidates))[: d.prompts]
        chosen = [candidates[i] for i in sorted(keep)]
        verdicts = sampling.sample_and_judge(
            params, mcfg, tok, d, chosen, d.samples, d.seed + 1, "pairs: sampling"
        )
        pool, found = judge.summary(verdicts), build(chosen, verdicts)
        prompts = len(chosen)
    sample_s, t = time.perf_counter() - t, time.perf_counter()
    if not found:
        raise ConfigError(
            f"dpo.samples={d.samples}: no preference pair (of {pool['completions']} samples a "
            f"fraction {pool['parse_fraction']:.3f} parse); raise dpo.samples or dpo.prompts, "
            "or train the SFT stage longer"
        )
    arrays = pairs.stack_pairs(tok, found, config.data.seq_len)
    logp_fn = jax.jit(make_logp_fn(get_model(mcfg.family).apply, mcfg))
    ref = pairs.reference_logps(params, arrays, logp_fn, config.data.batch_size)
    for i, p in enumerate(found):
        p.update({k: float(v[i]) for k, v in ref.items()})
    if jax.process_index() == 0:
        atomic.write_json(path, {"pool": pool, "pairs": found})
    _sync("dpo-pairs")
    held = sum(pairs.is_held_out(p["id"], d.eval_percent) for p in found)
    row = {"pair_prompts": prompts, "pairs": len(found), "eval_pairs": held, "pool": pool}
    if "gap" in found[0]:
        row["mean_gap"] = float(np.mean([p["gap"] for p in found]))
    return row | {"sample_s": sample_s, "reference_s": time.perf_counter() - t}


def compare(config, dirs: dict[str, str]) -> dict:
    """The `heldout` stage: `{name: judge.summary}` of each run of `dirs` (name -> workdir), all
    sampled with the same settings and keys on the first validation-split prompts."""
    d, tok = config.dpo, tokenizer_from_config(config.data)
    held = sampling.make_prompts(load_pairs(config.data, "validation"), tok, d.max_prompt_tokens)
    held = held[: d.heldout_prompts]
    row = {"heldout_prompts": len(held), "samples_per_prompt": d.heldout_samples}
    for name, workdir in dirs.items():
        verdicts = sampling.sample_and_judge(
            load_params(workdir), config.model, tok, d, held, d.heldout_samples, d.seed + 2, name
        )
        row[name] = judge.summary(verdicts)
    return row


def report_table(heldout: dict, names=("sft", "dpo")) -> str:
    """The markdown table of held-out parse fractions, one line per model."""
    lines = [
        "| model | held-out prompts | completions | parse fraction | prompts with a parse "
        "| mean body bytes | ended: dedent / EOS / budget |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in names:
        r = heldout[name]
        e = r["ended"]
        lines.append(
            f"| {name.upper()} | {r['prompts']} | {r['completions']} | {r['parse_fraction']:.3f} "
            f"| {r['prompts_with_a_parse']} | {r['mean_body_bytes']:.0f} "
            f"| {e['dedent']:.2f} / {e['stop']:.2f} / {e['truncated']:.2f} |"
        )
    return "\n".join(lines)
