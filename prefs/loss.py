"""Direct preference optimisation (Rafailov et al. 2023) with cached reference log-probabilities,
and the automatic judge that builds preference pairs without people.

Batch (one preference pair per row; each side a packed-style row with a response `loss_mask`):
  chosen_tokens, chosen_segment_ids, chosen_positions, chosen_loss_mask        [B, T]
  rejected_tokens, rejected_segment_ids, rejected_positions, rejected_loss_mask [B, T]
  ref_chosen_logp, ref_rejected_logp  [B]   from `add_reference_logps`, computed once with the
                                            frozen reference model (no second model in the step)
loss = -log sigmoid(beta * ((logp_c - ref_c) - (logp_r - ref_r))), averaged over pairs, where
logp is the summed log-probability of the response tokens (`loss_mask` on the predicted token).

Judge: a completion is accepted when `ast.parse` accepts prompt + completion (the prompt is a
function header, the completion its body); `preference_pairs` pairs every accepted completion of
a prompt with a rejected one of the same prompt. `function_body` cuts a sampled continuation of a
header to the function's body first: up to the first non-blank line at column 0 (the dedent that
ends the function), else all of it if the sampler stopped at EOS, else up to its last newline (the
token budget ran out mid-body; that body is judged as it stands).
"""

import ast
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from objectives.causal_lm import token_nll


def sequence_logp(logits_BTV: jax.Array, side: dict) -> jax.Array:
    """Summed log p [B] of the response tokens of one side (tokens, segment_ids, loss_mask)."""
    tokens_BT, seg_BT, mask_BT = side["tokens"], side["segment_ids"], side["loss_mask"]
    keep_BT = (seg_BT[:, 1:] == seg_BT[:, :-1]) & (seg_BT[:, 1:] != 0) & (mask_BT[:, 1:] != 0)
    nll_BT = token_nll(logits_BTV[:, :-1], tokens_BT[:, 1:])
    return -(nll_BT * keep_BT.astype(jnp.float32)).sum(-1)


def _side(batch: dict, prefix: str) -> dict:
    keys = ("tokens", "segment_ids", "positions", "loss_mask")
    return {k: batch[f"{prefix}_{k}"] for k in keys if f"{prefix}_{k}" in batch}


def add_reference_logps(ref_params, batch: dict, cfg, apply_fn: Callable) -> dict:
    """The batch with `ref_chosen_logp` / `ref_rejected_logp` of the reference model (cache them
    once per dataset: the reference never changes)."""
    out = dict(batch)
    for prefix in ("chosen", "rejected"):
        side = _side(batch, prefix)
        logits = apply_fn(ref_params, side, cfg)
        out[f"ref_{prefix}_logp"] = jax.lax.stop_gradient(sequence_logp(logits, side))
    return out


def make_loss_fn(cfg, apply_fn: Callable, *, beta: float = 0.1, bytes_per_token=None) -> Callable:
    """Builds `loss_fn(params, batch, rng) -> (loss, aux)`; aux counts pairs as `tokens`."""
    del bytes_per_token

    def loss_fn(params, batch: dict, rng: jax.Array | None = None):
        keys = (None, None) if rng is None else tuple(jax.random.split(rng))
        chosen, rejected = _side(batch, "chosen"), _side(batch, "rejected")
        logp_c = sequence_logp(apply_fn(params, chosen, cfg, rngs=keys[0]), chosen)
        logp_r = sequence_logp(apply_fn(params, rejected, cfg, rngs=keys[1]), rejected)
        margin_B = beta * (
            (logp_c - batch["ref_chosen_logp"]) - (logp_r - batch["ref_rejected_logp"])
        )
        loss_B = -jax.nn.log_sigmoid(margin_B)
        n = jnp.asarray(loss_B.shape[0], jnp.float32)
        aux = {
            "nll_sum": loss_B.sum(),
            "tokens": n,
            "bytes": n,
            "accuracy_sum": (margin_B > 0).sum().astype(jnp.float32),
        }
        return loss_B.mean(), aux

    return loss_fn


def parses(prompt: str, completion: str) -> bool:
    """The judge: does `prompt + completion` parse as Python?"""
    try:
        ast.parse(prompt + completion)
    except (SyntaxError, ValueError):
        return False
    return True


def function_body(text: str, stopped: bool) -> tuple[str, str]:
    """(body, how it ended) of a sampled continuation of a function header (module docstring).

    Args:
      text: the decoded continuation (without the stop token).
      stopped: whether the sampler emitted the stop token (EOS) before its token budget ran out.

    Returns:
      (body, 'dedent' | 'stop' | 'truncated').
    """
    at = 0
    for line in text.splitlines(keepends=True):
        if line.strip() and not line[0].isspace():
            return text[:at], "dedent"
        at += len(line)
    if stopped:
        return text, "stop"
    return text[: text.rfind("\n") + 1], "truncated"


def preference_pairs(
    prompt: str, completions: Sequence[str], judge: Callable[[str, str], bool] = parses
) -> list[tuple[str, str]]:
    """(chosen, rejected) pairs: each accepted completion with a rejected one, round robin.

    Args:
      prompt: the text the completions continue (the function header).
      completions: the sampled completions of that prompt.
      judge: `judge(prompt, completion) -> accepted` (default: `parses`).
    """
    verdicts = [judge(prompt, c) for c in completions]
    good = [c for c, ok in zip(completions, verdicts, strict=True) if ok]
    bad = [c for c, ok in zip(completions, verdicts, strict=True) if not ok]
    if not good or not bad:
        return []
    return [(g, bad[i % len(bad)]) for i, g in enumerate(good)]
