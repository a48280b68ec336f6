"""The automatic judges that build preference pairs without people, and their verdict summaries.

A sampled continuation is cut to the body first: up to the first non-blank line at column 0 (the
dedent), else all of it if the sampler stopped at EOS, else up to its last newline (the budget ran
out). The binary judge (DPO's) accepts a body when `ast.parse` accepts header + body.

The graded judge (`grade`, RLHF's held-out truth) scores a body in [0, 1] as a sum of parts:
  parses     0.40  header + body parse
  params     0.20  times the fraction of the parameters (not self / cls) the body reads; full
                   marks for a function without parameters
  nontrivial 0.15  a statement other than `pass`, `...`, a string or `raise NotImplementedError`
  returns    0.15  a `return <value>` where a value is promised (a return annotation other than
                   None, or 'return' in the docstring); full marks where none is promised
  length     0.10  between 1 and `MAX_LINES` non-blank body lines
A body that does not parse is judged on the longest prefix of its lines that does (the empty
body if none), so a good start that breaks late still earns the other parts.
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


def judge(tokenizer, header: str, completion: Sequence[int], stopped: bool, doc: str = "") -> dict:
    """The verdict on one completion: body text, how it ended, whether header + body parse, and
    the graded judge's `score` (`doc`: the function's docstring, the instruction)."""
    body, how = function_body(tokenizer.decode(completion), stopped)
    g = grade(header, body, doc)
    return {"body": body, "ended": how, "parses": parses(header, body), "score": g["score"]}


MAX_LINES = 40
WEIGHTS = {"parses": 0.40, "params": 0.20, "nontrivial": 0.15, "returns": 0.15, "length": 0.10}


def _function(header: str, body: str) -> ast.FunctionDef | None:
    """The function node of `header + body` (None if it does not parse)."""
    try:
        tree = ast.parse(header + body)
    except (SyntaxError, ValueError):
        return None
    return next(
        (n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))), None
    )


def _parsed_prefix(header: str, body: str) -> tuple[bool, ast.FunctionDef | None]:
    """(whether the whole body parses, the function node of the longest parsing line prefix)."""
    fn = _function(header, body)
    if fn is not None:
        return True, fn
    lines = body.splitlines(keepends=True)
    for n in range(len(lines) - 1, 0, -1):
        fn = _function(header, "".join(lines[:n]))
        if fn is not None:
            return False, fn
    return False, None


def _params(fn: ast.FunctionDef) -> list[str]:
    a = fn.args
    names = [x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
    names += [x.arg for x in (a.vararg, a.kwarg) if x is not None]
    return [n for n in names if n not in ("self", "cls")]


def _trivial(stmt: ast.stmt) -> bool:
    if isinstance(stmt, ast.Pass):
        return True
    if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
        return True  # `...` or a string
    if isinstance(stmt, ast.Raise) and stmt.exc is not None:
        exc = stmt.exc.func if isinstance(stmt.exc, ast.Call) else stmt.exc
        return isinstance(exc, ast.Name) and exc.id == "NotImplementedError"
    return False


def _promises_value(header: str, doc: str) -> bool:
    fn = _function(header, "    pass\n")
    ret = fn.returns if fn is not None else None
    if ret is not None:
        return not (isinstance(ret, ast.Constant) and ret.value is None)
    return "return" in doc.lower()


def grade(header: str, body: str, doc: str = "") -> dict:
    """The graded judge (module docstring): `{'score', <part>: fraction in [0, 1]}`.

    Args:
      header: the function's header (decorators and `def` line(s)), at column 0.
      body: the sampled body (cut by `function_body`).
      doc: the function's docstring (the instruction), read for a promised return value.
    """
    whole, fn = _parsed_prefix(header, body)
    stmts = [] if fn is None else fn.body
    inner = [n for s in stmts for n in ast.walk(s)]
    signature = _function(header, "    pass\n")  # the parameters, whatever the body
    params = [] if signature is None else _params(signature)
    read = {n.id for n in inner if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    returns = any(isinstance(n, ast.Return) and n.value is not None for n in inner)
    lines = sum(1 for line in body.splitlines() if line.strip())
    parts = {
        "parses": float(whole),
        "params": sum(p in read for p in params) / len(params) if params else 1.0,
        "nontrivial": float(any(not _trivial(s) for s in stmts)),
        "returns": float(returns or not _promises_value(header, doc)),
        "length": float(1 <= lines <= MAX_LINES),
    }
    parts["score"] = sum(WEIGHTS[k] * v for k, v in parts.items())
    return parts


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
        "judge_score": sum(v.get("score", 0.0) for v in flat) / n,
        "prompts_with_a_parse": sum(any(v["parses"] for v in vs) for vs in verdicts),
        "mean_body_bytes": float(np.mean([len(v["body"].encode()) for v in flat])) if flat else 0.0,
        "ended": {
            h: sum(v["ended"] == h for v in flat) / n for h in ("dedent", "stop", "truncated")
        },
    }
