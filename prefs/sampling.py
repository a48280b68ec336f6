"""Prompts of the DPO study and judged completions of them (temperature sampling, KV cache).

A prompt is `[BOS] instruction prompt + header` of an instruction pair whose response splits into
a header and a body; the model writes the body. Batch i of a call is sampled with the key
`fold_in(key(seed), i)`, so two parameter sets sampled alike see the same random numbers.
"""

import time
from collections.abc import Sequence

import jax

from data.instructions import PROMPT, split_header
from models.generate import SampleSettings, generate_array
from prefs.judge import judge


def make_prompts(pairs: Sequence[dict], tokenizer, max_tokens: int) -> list[dict]:
    """`{'id', 'header', 'doc', 'tokens'}` of every pair whose response has a header and whose
    prompt (`[BOS] PROMPT + header`) has at most `max_tokens` tokens, in the pairs' order (`doc`:
    the instruction, the function's docstring)."""
    out = []
    for pair in pairs:
        cut = split_header(pair["response"])
        if cut is None:
            continue
        text = PROMPT.format(instruction=pair["instruction"]) + cut[0]
        tokens = [tokenizer.bos_id, *tokenizer.encode(text).tolist()]
        if len(tokens) <= max_tokens:
            out.append(
                {"id": pair["id"], "header": cut[0], "doc": pair["instruction"], "tokens": tokens}
            )
    return out


def sample_and_judge(
    params, model_cfg, tokenizer, dpo_cfg, prompts: list[dict], k: int, seed: int, desc: str = ""
) -> list[list[dict]]:
    """`k` judged completions per prompt (prompt-major), sampled with `dpo_cfg`'s settings,
    `dpo_cfg.gen_batch` rows per call (the last filled with copies of its last prompt: one
    compiled shape). A non-empty `desc` prints a line per call."""
    settings = SampleSettings(
        max_new_tokens=dpo_cfg.max_new_tokens,
        temperature=dpo_cfg.temperature,
        top_k=dpo_cfg.top_k,
        top_p=dpo_cfg.top_p,
        stop_ids=(tokenizer.eos_id,),
        pad_id=tokenizer.pad_id,
    )
    flat = [(p["header"], p["tokens"], p.get("doc", "")) for p in prompts for _ in range(k)]
    B, verdicts, t0 = dpo_cfg.gen_batch, [], time.perf_counter()
    for i, start in enumerate(range(0, len(flat), B)):
        if desc:
            took = time.perf_counter() - t0
            print(f"{desc}: batch {i + 1}/{-(-len(flat) // B)}, {took:.0f} s", flush=True)
        chunk = flat[start : start + B]
        tokens = [t for _, t, _ in chunk] + [chunk[-1][1]] * (B - len(chunk))
        key = jax.random.fold_in(jax.random.key(seed), i)
        rows = generate_array(
            params, tokens, model_cfg, settings, key, prompt_len=dpo_cfg.max_prompt_tokens
        )
        for (header, _, doc), row in zip(chunk, rows[: len(chunk)].tolist(), strict=True):
            cut = next((j for j, t in enumerate(row) if t == tokenizer.eos_id), None)
            verdicts.append(judge(tokenizer, header, row[:cut], cut is not None, doc))
    return [verdicts[i * k : (i + 1) * k] for i in range(len(prompts))]
