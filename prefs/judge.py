"""The automatic judge that builds preference pairs without people, and its verdict summaries.

A completion (a function body) is accepted when `ast.parse` accepts header + body. A sampled
continuation is cut to the body first: up to the first non-blank line at column 0 (the dedent),
else all of it if the sampler stopped at EOS, else up to its last newline (the budget ran out).
"""

import ast
from collections.abc import Callable, Sequence

import numpy as np


def parses(prompt: str, completion: str) -> bool:
    """The judge: does `prompt + completion` parse as Python?"""
    try:
        ast.parse(prompt + completion)
    except (SyntaxError, ValueError):
        return False
    return True


def function_body(text: str, stopped: bool) -> tuple[str, str]:
    """(body, 'dedent' | 'stop' | 'truncated') of the decoded continuation `text` of a function
    header (module docstring); `stopped`: the sampler emitted EOS before its budget ran out."""
    at = 0
    for line in text.splitlines(keepends=True):
        if line.strip() and not line[0].isspace():
            return text[:at], "dedent"
        at += len(line)
    if stopped:
        return text, "stop"
    return text[: text.rfind("\n") + 1], "truncated"


def judge(tokenizer, header: str, completion: Sequence[int], stopped: bool) -> dict:
    """The verdict on one completion: body text, how it ended, whether header + body parse."""
    body, how = function_body(tokenizer.decode(completion), stopped)
    return {"body": body, "ended": how, "parses": parses(header, body)}


def preference_pairs(
    prompt: str, completions: Sequence[str], judge: Callable[[str, str], bool] = parses
) -> list[tuple[str, str]]:
    """(chosen, rejected) pairs of the `completions` of `prompt`: each accepted (by
    `judge(prompt, completion)`) with a rejected one, round robin."""
    verdicts = [judge(prompt, c) for c in completions]
    good = [c for c, ok in zip(completions, verdicts, strict=True) if ok]
    bad = [c for c, ok in zip(completions, verdicts, strict=True) if not ok]
    if not good or not bad:
        return []
    return [(g, bad[i % len(bad)]) for i, g in enumerate(good)]


def build_pairs(prompts: Sequence[dict], verdicts: Sequence[Sequence[dict]]) -> list[dict]:
    """`{'id', 'prompt', 'chosen', 'rejected'}`: an accepted over a rejected body of one prompt
    (`prompts` from `prefs.sampling.make_prompts`, `verdicts` one list per prompt)."""
    out = []
    for prompt, vs in zip(prompts, verdicts, strict=True):
        by_body = {v["body"]: v["parses"] for v in vs}
        bodies = [v["body"] for v in vs]
        found = preference_pairs(prompt["header"], bodies, lambda _, b, ok=by_body: ok[b])
        out += [
            {"id": prompt["id"], "prompt": prompt["tokens"], "chosen": c, "rejected": r}
            for c, r in found
        ]
    return out


def summary(verdicts: Sequence[Sequence[dict]]) -> dict:
    """Figures of judged completions (one list per prompt): the fraction that parse, prompts with
    at least one that parses, mean body bytes and how the bodies ended."""
    flat = [v for vs in verdicts for v in vs]
    n = max(len(flat), 1)
    return {
        "prompts": len(verdicts),
        "completions": len(flat),
        "parse_fraction": sum(v["parses"] for v in flat) / n,
        "prompts_with_a_parse": sum(any(v["parses"] for v in vs) for vs in verdicts),
        "mean_body_bytes": float(np.mean([len(v["body"].encode()) for v in flat])) if flat else 0.0,
        "ended": {
            h: sum(v["ended"] == h for v in flat) / n for h in ("dedent", "stop", "truncated")
        },
    }
