"""Preference tuning with DPO, end to end: sample, judge, pair, cache the reference, train, compare.

`dpo_and_evaluate(config, workdir)` takes an instruction-tuned run (`config.init_from`, the SFT
workdir) and `config.dpo` (experiments/dpo.py):
  1. prompts: instruction pairs whose response splits into a header and a body
     (`data.instructions.split_header`); the prompt is `[BOS] instruction prompt + header`, the
     model writes the body. Pair prompts come from the train split, the held-out prompts from the
     validation split (crc32 of 'path:name'), never used for pairs.
  2. `dpo.samples` completions per pair prompt from the SFT model (temperature sampling with the
     KV cache, prompts of different lengths left-padded in one batch, EOS as the stop token);
  3. each judged by `prefs.loss.function_body` + `parses(header, body)`; (chosen, rejected)
     pairs are an accepted and a rejected body of the same prompt, each followed by EOS;
  4. the reference (the frozen SFT parameters) scores every pair once, in a jitted sharded
     forward; the log-probs are cached in `<workdir>/pairs.json` with the pairs;
  5. the policy (a `train.loop.Run` initialised from the SFT checkpoint: mesh, sharded state,
     optimizer) is trained with the DPO loss by the project's train step, jitted with in/out
     shardings and the state donated; the reference is not on device during training;
  6. on the held-out prompts, the SFT and the DPO parameters sample with the same settings and
     the same keys; the report gives the fraction of completions that parse for each.

Writes `config.json`, `metrics.jsonl`, `pairs.json`, a final checkpoint (the policy's train state,
readable by launch/sample.py) and `report.json` / `report.md`, all atomically.
"""

import json
import os
import time
from collections.abc import Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from common import atomic
from compress.quant import wrap_apply
from data.instructions import PROMPT, load_pairs, split_header
from models.generate import SampleSettings, generate_array
from parallel.sharding import batch_shardings
from prefs import loss as dpo
from studies.recipes import recipe_for
from train.loop import ConfigError, Run, claim_workdir
from train.metrics import MetricWriter
from train.step import make_train_step

SIDES = ("chosen", "rejected")
PAIR_KEYS = {
    f"{s}_{k}": 2 for s in SIDES for k in ("tokens", "segment_ids", "positions", "loss_mask")
}
PAIR_KEYS |= {f"ref_{s}_logp": 1 for s in SIDES}


def make_prompts(pairs: Sequence[dict], tokenizer, max_tokens: int) -> list[dict]:
    """`{'id', 'header', 'tokens'}` of every pair whose response has a header and whose prompt
    (`[BOS] PROMPT + header`) has at most `max_tokens` tokens, in the pairs' order."""
    out = []
    for pair in pairs:
        cut = split_header(pair["response"])
        if cut is None:
            continue
        text = PROMPT.format(instruction=pair["instruction"]) + cut[0]
        tokens = [tokenizer.bos_id, *tokenizer.encode(text).tolist()]
        if len(tokens) <= max_tokens:
            out.append({"id": pair["id"], "header": cut[0], "tokens": tokens})
    return out


def sample(
    params,
    model_cfg,
    prompts: Sequence[Sequence[int]],
    settings: SampleSettings,
    *,
    seed: int,
    batch_size: int,
    prompt_len: int,
    desc: str = "",
) -> list[tuple[list[int], bool]]:
    """(completion ids without the stop id, stopped) per prompt, `batch_size` rows per call.

    Batch i uses the key `fold_in(key(seed), i)`, so two parameter sets sampled with the same
    arguments see the same random numbers. The last batch is filled with copies of its last
    prompt (one compiled shape). A non-empty `desc` prints a line per call.
    """
    out, t0, calls = [], time.perf_counter(), -(-len(prompts) // batch_size)
    for i, start in enumerate(range(0, len(prompts), batch_size)):
        if desc:
            print(f"{desc}: batch {i + 1}/{calls}, {time.perf_counter() - t0:.0f} s", flush=True)
        chunk = list(prompts[start : start + batch_size])
        n = len(chunk)
        chunk += [chunk[-1]] * (batch_size - n)
        key = jax.random.fold_in(jax.random.key(seed), i)
        rows = generate_array(params, chunk, model_cfg, settings, key, prompt_len=prompt_len)
        for row in rows[:n].tolist():
            cut = next((j for j, t in enumerate(row) if t in settings.stop_ids), None)
            out.append((row if cut is None else row[:cut], cut is not None))
    return out


def judge(tokenizer, header: str, completion: list[int], stopped: bool) -> dict:
    """The verdict on one completion: body text, how it ended, whether header + body parse."""
    body, how = dpo.function_body(tokenizer.decode(completion), stopped)
    return {"body": body, "ended": how, "parses": dpo.parses(header, body)}


def pair_row(tokenizer, prompt: Sequence[int], body: str, seq_len: int) -> dict[str, np.ndarray]:
    """One side of a pair: `prompt + body + [EOS]` in a row of `seq_len`, `loss_mask` on the body
    and EOS (cut at `seq_len`)."""
    response = [*tokenizer.encode(body).tolist(), tokenizer.eos_id]
    tokens = [*prompt, *response][:seq_len]
    n = len(tokens)
    row = {k: np.zeros(seq_len, np.int32) for k in ("tokens", "segment_ids", "positions")}
    row["loss_mask"] = np.zeros(seq_len, np.int32)
    row["tokens"][:n] = tokens
    row["segment_ids"][:n] = 1
    row["positions"][:n] = np.arange(n)
    row["loss_mask"][len(prompt) : n] = 1
    return row


def stack_pairs(tokenizer, pairs: Sequence[dict], seq_len: int) -> dict[str, np.ndarray]:
    """Arrays [N, seq_len] of `chosen_*` / `rejected_*` from `{'prompt', 'chosen', 'rejected'}`."""
    out: dict[str, list] = {}
    for pair in pairs:
        for side in SIDES:
            row = pair_row(tokenizer, pair["prompt"], pair[side], seq_len)
            for k, v in row.items():
                out.setdefault(f"{side}_{k}", []).append(v)
    return {k: np.stack(v) for k, v in out.items()}


def reference_logps(
    ref_params, arrays: dict[str, np.ndarray], logp_fn, batch_size: int
) -> dict[str, np.ndarray]:
    """`{'ref_chosen_logp', 'ref_rejected_logp'}` [N] of every pair, `batch_size` rows per call
    of `logp_fn(params, batch) -> (chosen [B], rejected [B])` (the last batch padded)."""
    n = len(arrays["chosen_tokens"])
    chosen, rejected = [], []
    for start in range(0, n, batch_size):
        idx = np.minimum(np.arange(start, start + batch_size), n - 1)
        c, r = logp_fn(ref_params, {k: v[idx] for k, v in arrays.items()})
        m = min(batch_size, n - start)
        chosen.append(np.asarray(c)[:m])
        rejected.append(np.asarray(r)[:m])
    return {
        "ref_chosen_logp": np.concatenate(chosen),
        "ref_rejected_logp": np.concatenate(rejected),
    }


def make_logp_fn(apply_fn, model_cfg):
    """`(params, pair batch) -> (logp chosen [B], logp rejected [B])` (summed over responses)."""

    def logp_fn(params, batch):
        out = []
        for side in SIDES:
            s = {k.removeprefix(f"{side}_"): v for k, v in batch.items() if k.startswith(side)}
            out.append(dpo.sequence_logp(apply_fn(params, s, model_cfg), s))
        return tuple(out)

    return logp_fn


def parse_fraction(verdicts: Sequence[dict]) -> float:
    return sum(v["parses"] for v in verdicts) / max(len(verdicts), 1)


def _settings(d, tokenizer) -> SampleSettings:
    return SampleSettings(
        max_new_tokens=d.max_new_tokens,
        temperature=d.temperature,
        top_k=d.top_k,
        top_p=d.top_p,
        stop_ids=(tokenizer.eos_id,),
        pad_id=tokenizer.pad_id,
    )


def sample_and_judge(
    params, run: Run, prompts: list[dict], k: int, seed: int, desc: str = ""
) -> list[list[dict]]:
    """`k` judged completions per prompt (prompt-major), sampled with `config.dpo`'s settings."""
    d, tok = run.config.dpo, run.tokenizer
    flat = [p["tokens"] for p in prompts for _ in range(k)]
    outs = sample(
        params,
        run.config.model,
        flat,
        _settings(d, tok),
        seed=seed,
        batch_size=d.gen_batch,
        prompt_len=d.max_prompt_tokens,
        desc=desc,
    )
    verdicts = [
        judge(tok, prompts[i // k]["header"], ids, stop) for i, (ids, stop) in enumerate(outs)
    ]
    return [verdicts[i * k : (i + 1) * k] for i in range(len(prompts))]


def build_pairs(prompts: list[dict], verdicts: list[list[dict]]) -> list[dict]:
    """Preference pairs (accepted body over rejected body of the same prompt)."""
    out = []
    for prompt, vs in zip(prompts, verdicts, strict=True):
        by_body = {v["body"]: v["parses"] for v in vs}
        pairs = dpo.preference_pairs(
            prompt["header"], [v["body"] for v in vs], judge=lambda _, body, v=by_body: v[body]
        )
        out += [
            {"id": prompt["id"], "prompt": prompt["tokens"], "chosen": c, "rejected": r}
            for c, r in pairs
        ]
    return out


def _summary(verdicts: list[list[dict]]) -> dict:
    flat = [v for vs in verdicts for v in vs]
    ended = {
        how: sum(v["ended"] == how for v in flat) / max(len(flat), 1)
        for how in ("dedent", "stop", "truncated")
    }
    return {
        "prompts": len(verdicts),
        "completions": len(flat),
        "parse_fraction": parse_fraction(flat),
        "prompts_with_a_parse": sum(any(v["parses"] for v in vs) for vs in verdicts),
        "mean_body_bytes": float(np.mean([len(v["body"].encode()) for v in flat])) if flat else 0.0,
        "ended": ended,
    }


def dpo_and_evaluate(config, workdir: str) -> dict:
    """Runs steps 1-6 of the module docstring; returns the report."""
    t0 = time.perf_counter()
    d = config.dpo
    try:
        if not config.init_from:
            raise ValueError("dpo needs init_from=<the SFT workdir> (the policy and reference)")
        run = Run(config, recipe=recipe_for(config))
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(str(e)) from e
    claim_workdir(workdir, config, "dpo run")
    tok, mcfg = run.tokenizer, config.model
    ref_host = jax.device_get(run.state.params)  # the frozen SFT model
    train_prompts = make_prompts(load_pairs(config.data, "train"), tok, d.max_prompt_tokens)
    held_prompts = make_prompts(load_pairs(config.data, "validation"), tok, d.max_prompt_tokens)
    rng = np.random.default_rng(d.seed)  # a deterministic subset of the pair prompts
    train_prompts = [
        train_prompts[i] for i in sorted(rng.permutation(len(train_prompts))[: d.prompts])
    ]
    held_prompts = held_prompts[: d.heldout_prompts]
    seq_len = config.data.seq_len
    logp_fn = make_logp_fn(wrap_apply(run.model, mcfg), mcfg)
    pair_shardings = batch_shardings(PAIR_KEYS, run.mesh, run.rules)
    pairs_path = os.path.join(workdir, "pairs.json")
    timings = {}
    reuse = d.get("pairs_from", "") or pairs_path
    if os.path.exists(reuse):  # sampled, judged and scored by an earlier call
        cached = atomic_read(reuse)
        pairs, pool = cached["pairs"], cached["pool"]
    else:
        t = time.perf_counter()
        verdicts = sample_and_judge(
            ref_host, run, train_prompts, d.samples, d.seed + 1, "sampling pairs"
        )
        timings["sample_pairs_s"] = time.perf_counter() - t
        pool = _summary(verdicts)
        pairs = build_pairs(train_prompts, verdicts)
        if not pairs:
            raise ConfigError(
                f"no preference pair: of {pool['completions']} samples a fraction "
                f"{pool['parse_fraction']:.3f} parse; raise dpo.samples or dpo.prompts"
            )
        t = time.perf_counter()
        arrays = stack_pairs(tok, pairs, seq_len)
        only = {k: v for k, v in pair_shardings.items() if not k.startswith("ref_")}
        with run.activate():
            ref_fn = jax.jit(
                logp_fn,
                in_shardings=(run.state_shardings.params, only),
                out_shardings=NamedSharding(run.mesh, P()),
            )
            ref = reference_logps(run.state.params, arrays, ref_fn, config.data.batch_size)
        timings["reference_s"] = time.perf_counter() - t
        for i, pair in enumerate(pairs):
            pair["ref_chosen_logp"] = float(ref["ref_chosen_logp"][i])
            pair["ref_rejected_logp"] = float(ref["ref_rejected_logp"][i])
        atomic.write_json(pairs_path, {"pool": pool, "pairs": pairs})
    if reuse != pairs_path:
        atomic.write_json(pairs_path, {"pool": pool, "pairs": pairs})
    arrays = stack_pairs(tok, pairs, seq_len)
    arrays["ref_chosen_logp"] = np.asarray([p["ref_chosen_logp"] for p in pairs], np.float32)
    arrays["ref_rejected_logp"] = np.asarray([p["ref_rejected_logp"] for p in pairs], np.float32)
    t = time.perf_counter()
    state = train_policy(run, arrays, pair_shardings, logp_fn, MetricWriter(workdir))
    timings["train_s"] = time.perf_counter() - t
    save_state(os.path.join(workdir, "checkpoints"), config.train.steps, state)
    policy_host = jax.device_get(state.params)
    t = time.perf_counter()
    held = {
        name: _summary(
            sample_and_judge(params, run, held_prompts, d.heldout_samples, d.seed + 2, name)
        )
        for name, params in (("sft", ref_host), ("dpo", policy_host))
    }
    timings["sample_heldout_s"] = time.perf_counter() - t
    report = {
        "heldout_prompts": len(held_prompts),
        "samples_per_heldout_prompt": d.heldout_samples,
        "sft": held["sft"],
        "dpo": held["dpo"],
        "pair_prompts": len(train_prompts),
        "samples_per_pair_prompt": d.samples,
        "pair_pool": pool,
        "pairs": len(pairs),
        "beta": d.beta,
        "steps": config.train.steps,
        "lr": config.train.lr,
        "sampling": {k: d[k] for k in ("temperature", "top_k", "top_p", "max_new_tokens")},
        "timings_s": timings,
        "wall_s": time.perf_counter() - t0,
    }
    atomic.write_json(os.path.join(workdir, "report.json"), report)
    atomic.write_text(os.path.join(workdir, "report.md"), report_table(report) + "\n")
    return report


def atomic_read(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def save_state(directory: str, step: int, state) -> None:
    """The policy's train state as an Orbax checkpoint of `step` (train.checkpoint.load_state and
    launch/sample.py read it; there is no data iterator to save)."""
    with ocp.CheckpointManager(os.path.abspath(directory)) as manager:
        manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
        manager.wait_until_finished()


def train_policy(run: Run, arrays: dict, shardings: dict, logp_fn, writer) -> object:
    """`config.train.steps` DPO updates of `run.state` on shuffled pair batches; returns the state.

    Logs the DPO loss, the pair accuracy (policy margin over the reference's > 0) and the mean
    policy log-prob margin chosen - rejected of each batch. Batches are placed with
    `jax.device_put` on their shardings: one process (every host would need its block of rows
    through `jax.make_array_from_process_local_data`, as `Run.global_batch` does, to go further).
    """
    c = run.config
    loss_fn = dpo.make_loss_fn(c.model, wrap_apply(run.model, c.model), beta=c.dpo.beta)
    step_fn = make_train_step(loss_fn, run.optimizer, c.train.grad_accum)

    def step(state, batch):
        logp_c, logp_r = logp_fn(state.params, batch)  # before the update, for the log
        state, metrics = step_fn(state, batch, run.schedule_args)
        implicit = (logp_c - batch["ref_chosen_logp"]) - (logp_r - batch["ref_rejected_logp"])
        metrics |= {
            "accuracy": (implicit > 0).mean(),
            "margin": (logp_c - logp_r).mean(),
            "reward_margin": c.dpo.beta * implicit.mean(),
        }
        return state, metrics

    replicated = NamedSharding(run.mesh, P())
    n, rows = len(arrays["chosen_tokens"]), c.data.batch_size
    rng = np.random.default_rng(c.seed)  # pairs reshuffled every epoch
    epochs = -(-c.train.steps * rows // n)
    order = np.concatenate([rng.permutation(n) for _ in range(epochs)])
    state = run.state
    with run.activate():
        jitted = jax.jit(
            step,
            in_shardings=(run.state_shardings, shardings),
            out_shardings=(run.state_shardings, replicated),
            donate_argnums=(0,),
        )
        for i in range(1, c.train.steps + 1):
            idx = order[(i - 1) * rows : i * rows]
            batch = {k: jax.device_put(v[idx], shardings[k]) for k, v in arrays.items()}
            state, metrics = jitted(state, batch)
            if i % c.train.log_every == 0 or i == c.train.steps:
                m = jax.device_get(metrics)
                row = {
                    f"dpo/{k}": float(m[k]) for k in ("loss", "accuracy", "margin", "reward_margin")
                }
                writer.write(i, row | {"train/lr": float(m["lr"])})
                print(
                    f"dpo step {i}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items()),
                    flush=True,
                )
    writer.close()
    return state


def report_table(report: dict) -> str:
    """The markdown table of held-out parse fractions (SFT vs DPO) and the run's figures."""
    lines = [
        "| model | held-out prompts | completions | parse fraction | prompts with a parse "
        "| mean body bytes | ended: dedent / EOS / budget |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in ("sft", "dpo"):
        r = report[name]
        e = r["ended"]
        lines.append(
            f"| {name.upper()} | {r['prompts']} | {r['completions']} | {r['parse_fraction']:.3f} "
            f"| {r['prompts_with_a_parse']} | {r['mean_body_bytes']:.0f} "
            f"| {e['dedent']:.2f} / {e['stop']:.2f} / {e['truncated']:.2f} |"
        )
    pool = report["pair_pool"]
    lines += [
        "",
        f"Pairs: {report['pairs']} from {report['pair_prompts']} train prompts x "
        f"{report['samples_per_pair_prompt']} SFT samples ({pool['parse_fraction']:.3f} of them "
        f"parse); beta {report['beta']}, {report['steps']} steps at lr {report['lr']}; "
        f"sampling {report['sampling']}; wall {report['wall_s']:.0f} s.",
    ]
    return "\n".join(lines)
