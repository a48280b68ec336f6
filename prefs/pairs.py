"""Preference pairs as training data: pairs.json, its arrays, reference scoring, grain batches.

`pairs.json` (prefs/study.py) is `{'pool', 'pairs'}`, a pair `{'id', 'prompt' (token ids),
'chosen', 'rejected' (body texts), 'ref_chosen_logp', 'ref_rejected_logp'}` (the frozen
reference's log-probs, computed once). A side is a row `prompt + body + [EOS]` with `loss_mask`
on the body and EOS; a row's `weight` is 0 where it pads the last held-out batch. Whole prompts
are held out (`is_held_out`), and a run that selects among its checkpoints (the reward model)
evaluates on a validation split carved from the training prompts (`split_pairs`), never on them.
Training batches are a checkpointable grain dataset whose global batches do not depend on the
process count (each process keeps its block of rows).
"""

import json
import zlib
from collections.abc import Callable, Sequence

import grain
import numpy as np

from common import atomic
from data.batching import shuffle_seed
from prefs.loss import SIDES


def is_held_out(pair_id: str, eval_percent: int) -> bool:
    """Whether the pairs of prompt `pair_id` are held out: crc32 % 100 below `eval_percent`."""
    return zlib.crc32(f"dpo-eval:{pair_id}".encode()) % 100 < eval_percent


def split_pairs(
    pairs: Sequence[dict], eval_percent: int, val_percent: int = 0
) -> tuple[list, list, list]:
    """(train, validation, held-out) pairs, split by prompt: held out as `is_held_out`, and of the
    rest the prompts whose second crc32 % 100 is below `val_percent` are the validation split."""
    out: tuple[list, list, list] = ([], [], [])
    for p in pairs:
        if is_held_out(p["id"], eval_percent):
            out[2].append(p)
        else:
            out[zlib.crc32(f"val:{p['id']}".encode()) % 100 < val_percent].append(p)
    return out


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
    """Arrays [N, seq_len] of `chosen_*` / `rejected_*`, and `ref_*_logp` [N] where the pairs
    carry them."""
    out: dict[str, list] = {}
    for pair in pairs:
        for s in SIDES:
            for k, v in pair_row(tokenizer, pair["prompt"], pair[s], seq_len).items():
                out.setdefault(f"{s}_{k}", []).append(v)
    arrays = {k: np.stack(v) for k, v in out.items()}
    arrays["weight"] = np.ones(len(pairs), np.int32)
    for s in SIDES:
        if pairs and f"ref_{s}_logp" in pairs[0]:
            arrays[f"ref_{s}_logp"] = np.asarray([p[f"ref_{s}_logp"] for p in pairs], np.float32)
    return arrays


def reference_logps(
    ref_params, arrays: dict[str, np.ndarray], logp_fn: Callable, batch_size: int
) -> dict[str, np.ndarray]:
    """`{'ref_chosen_logp', 'ref_rejected_logp'}` [N] of every pair, `batch_size` rows per call
    of `logp_fn(params, batch) -> (chosen [B], rejected [B])` (the last batch padded)."""
    n = len(arrays["chosen_tokens"])
    out = []
    for start in range(0, n, batch_size):
        idx = np.minimum(np.arange(start, start + batch_size), n - 1)
        sides = logp_fn(ref_params, {k: v[idx] for k, v in arrays.items()})
        out.append([np.asarray(x)[: n - start] for x in sides])
    return {f"ref_{s}_logp": np.concatenate([o[i] for o in out]) for i, s in enumerate(SIDES)}


def make_train_iterator(
    arrays: dict[str, np.ndarray], batch_size: int, *, seed: int, index: int = 0, count: int = 1
) -> grain.DatasetIterator:
    """Endless, checkpointable batches: block `index` of `count` of each global batch of
    `batch_size` pairs, shuffled from `seed` and reshuffled every epoch."""
    rows, n = batch_size // count, len(next(iter(arrays.values())))
    pairs = [{k: v[i] for k, v in arrays.items()} for i in range(n)]
    ds = grain.MapDataset.source(pairs).shuffle(seed=shuffle_seed(seed)).repeat(None)
    block = slice(index * rows, (index + 1) * rows)  # this process's rows of a global batch
    ds = ds.batch(batch_size, drop_remainder=True).map(
        lambda b: {k: v[block] for k, v in b.items()}
    )
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=0)))


def make_eval_batches(
    arrays: dict[str, np.ndarray], batch_size: int, num_batches: int, *, index=0, count=1
) -> list[dict[str, np.ndarray]]:
    """The first `num_batches` global batches of the held-out pairs in their file order, the
    last one padded with rows of weight 0; this process's block of rows of each."""
    n = len(next(iter(arrays.values())))
    padded = -(-n // batch_size) * batch_size
    pad = {k: np.pad(v, [(0, padded - n)] + [(0, 0)] * (v.ndim - 1)) for k, v in arrays.items()}
    lo, rows = index * (batch_size // count), batch_size // count
    return [
        {k: v[i * batch_size + lo :][:rows] for k, v in pad.items()}
        for i in range(min(padded // batch_size, num_batches))
    ]


def pairs_source(run, index: int, count: int, block, field: str, with_ref: bool, val_percent=0):
    """(train iterator, eval batches) of the pairs.json `block.pairs` (`field`: the block's name
    in messages; `with_ref`: the pairs must carry reference log-probs); the eval batches are the
    held-out pairs, or with `val_percent` > 0 the validation pairs (`split_pairs`: the held-out
    ones are then neither trained nor evaluated on). ValueError if the file is missing or holds
    fewer training or evaluation pairs than a batch."""
    config = run.config
    d, B = block, config.data.batch_size
    if not atomic.exists(d.pairs):
        raise ValueError(
            f"{field}.pairs={d.pairs!r} does not exist; run the study experiments/dpo.py or "
            "experiments/rlhf.py (its pairs stage writes one) or pass a pairs.json"
        )
    train, val, held = split_pairs(
        json.loads(atomic.read_text(d.pairs))["pairs"], d.eval_percent, val_percent
    )
    evals, what, knob = (val, "validation", f"val_percent={val_percent}")
    if not val_percent:
        evals, what, knob = held, "held-out", f"eval_percent={d.eval_percent}"
    for name, part, least in (("training", train, B), (what, evals, 1)):
        if len(part) < least:
            raise ValueError(
                f"{field}.pairs={d.pairs!r} holds {len(part)} {name} pairs, fewer than {least} "
                f"(data.batch_size={B}); change {field}.{knob}, lower the "
                "batch size or sample more pairs"
            )
        if with_ref and "ref_chosen_logp" not in part[0]:
            raise ValueError(f"{field}.pairs={d.pairs!r} has no reference log-probs; rescore it")
    seq_len, tok = config.data.seq_len, run.tokenizer
    strip = lambda a: a if with_ref else {k: v for k, v in a.items() if not k.startswith("ref_")}
    train_iter = make_train_iterator(
        strip(stack_pairs(tok, train, seq_len)), B, seed=config.seed, index=index, count=count
    )
    eval_local = make_eval_batches(
        strip(stack_pairs(tok, evals, seq_len)),
        B,
        config.train.eval_batches,
        index=index,
        count=count,
    )
    return train_iter, eval_local


def data_source(run, index: int, count: int):
    """The DPO recipe's `data` hook: `pairs_source` of `config.dpo`."""
    return pairs_source(run, index, count, run.config.dpo, "dpo", with_ref=True)
