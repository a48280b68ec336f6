"""The reward model against the judge on the held-out pairs (the RLHF study's `reward_eval`):
pairwise accuracy with its 95% Wilson interval, two baselines fitted on the training pairs,
and calibration.

A baseline is a rule that never looks at the bodies' contents, fitted on the pairs that are not
held out and scored on the held-out ones: the majority baseline answers always 'first' or always
'second' (each pair is shown in a fixed random order), the length baseline always the longer or
always the shorter body (ties count half). Fitting them on the held-out pairs themselves would
pick the better of two coin flips with hindsight, above 0.5 on a small split by chance alone.
"""

import json
import math
import zlib

import jax
import numpy as np

from common import atomic
from data.pipeline import tokenizer_from_config
from models import get_model
from prefs import pairs
from prefs.critic import critic_params, critic_step
from prefs.heads import SCORE_HEAD, WithHead
from prefs.reward_loss import make_score_fn
from train.validate import ConfigError


def wilson(k: float, n: int, z: float = 1.959964) -> list[float]:
    """The Wilson score interval [low, high] (95% at z = 1.959964) of a binomial proportion
    k / n (a list: the stage row round-trips through JSON unchanged)."""
    p, zz = k / n, z * z
    centre = (p + zz / (2 * n)) / (1 + zz / n)
    half = z * math.sqrt(p * (1 - p) / n + zz / (4 * n * n)) / (1 + zz / n)
    return [centre - half, centre + half]


def first_is_chosen(pair: dict, i: int) -> bool:
    """The order pair `i` of pairs.json is shown in (a fixed coin per pair)."""
    return zlib.crc32(f"{pair['id']}:{i}".encode()) % 2 == 0


def calibration(p_first: np.ndarray, y_first: np.ndarray, bins: int = 10) -> dict:
    """Expected calibration error and the bins (count, mean predicted, observed frequency) of
    predicted P(first preferred) against the judge's labels."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(p_first, edges[1:-1]), 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            mean_p, freq = float(p_first[sel].mean()), float(y_first[sel].mean())
            ece += sel.mean() * abs(mean_p - freq)
            rows.append({"bin": b, "count": int(sel.sum()), "predicted": mean_p, "observed": freq})
    return {"ece": float(ece), "bins": rows}


def lengths(part: list[tuple[int, dict]], side: str) -> np.ndarray:
    return np.array([len(p[side]) for _, p in part])


def baselines(train: list[tuple[int, dict]], held: list[tuple[int, dict]]) -> dict:
    """Held-out accuracy of the majority and length baselines fitted on `train` ((index in
    pairs.json, pair) of the pairs not held out), and what they learnt."""

    def features(part):
        first = np.array([first_is_chosen(p, i) for i, p in part], bool)
        shorter = np.sign(lengths(part, "rejected") - lengths(part, "chosen"))
        return first, shorter  # shorter: +1 the chosen body is shorter, -1 longer, 0 a tie

    first, shorter = features(train)
    say_first = first.mean() >= 0.5
    say_shorter = (shorter > 0).sum() >= (shorter < 0).sum()
    first, shorter = features(held)
    by_length = np.where(shorter == 0, 0.5, (shorter > 0) == say_shorter)
    return {
        "majority_baseline": float((first == say_first).mean()),
        "majority_answer": "first" if say_first else "second",
        "length_baseline": float(by_length.mean()),
        "length_answer": "shorter" if say_shorter else "longer",
        "held_chosen_shorter": float((shorter > 0).mean()),
    }


def reward_eval(config, rm_dir: str, pairs_path: str) -> dict:
    """The `reward_eval` stage: the reward model (its checkpoint of best validation accuracy,
    prefs/critic.py) on the held-out pairs: accuracy and its Wilson interval, `baselines` (and
    their intervals), calibration of sigmoid(r_first - r_second)."""
    tok, mcfg, B = tokenizer_from_config(config.data), config.model, config.data.batch_size
    train, held = [], []
    for i, p in enumerate(json.loads(atomic.read_text(pairs_path))["pairs"]):
        (held if pairs.is_held_out(p["id"], config.reward.eval_percent) else train).append((i, p))
    if not held:
        raise ConfigError("reward.eval_percent leaves no held-out pair; raise it")
    arrays = pairs.stack_pairs(tok, [p for _, p in held], config.data.seq_len)
    model = WithHead(get_model(mcfg.family), SCORE_HEAD)
    score = jax.jit(make_score_fn(model.outputs, mcfg))
    params, n = critic_params(rm_dir), len(held)
    r = {}
    for s in ("chosen", "rejected"):
        got = []
        for start in range(0, n, B):
            idx = np.minimum(np.arange(start, start + B), n - 1)
            rows = {k: arrays[f"{s}_{k}"][idx] for k in ("tokens", "segment_ids", "positions")}
            got.append(np.asarray(score(params, rows))[: n - start])
        r[s] = np.concatenate(got)
    first = np.array([first_is_chosen(p, i) for i, p in held])
    margin = np.where(first, r["chosen"] - r["rejected"], r["rejected"] - r["chosen"])
    p_first = 1.0 / (1.0 + np.exp(-margin))
    right_B = r["chosen"] > r["rejected"]
    right, longer = float(right_B.sum()), lengths(held, "chosen") > lengths(held, "rejected")
    base = baselines(train, held)
    intervals = {
        f"{k}_interval": wilson(base[k] * n, n) for k in ("majority_baseline", "length_baseline")
    }
    return {
        "eval_pairs": n,
        "train_pairs": len(train),
        "rm_step": critic_step(rm_dir),
        "accuracy": right / n,
        "accuracy_interval": wilson(right, n),
        # where the judge prefers the longer body, which the length baseline gets wrong
        "accuracy_chosen_longer": float(right_B[longer].mean()) if longer.any() else None,
        "chosen_longer": int(longer.sum()),
        **base,
        **intervals,
        **calibration(p_first, first.astype(np.float64)),
    }
