"""Preference pairs as training data: pairs.json, its arrays, reference scoring, grain batches.

`pairs.json` (written by the study's `pairs` stage, prefs/study.py) is `{'pool': ..., 'pairs':
[...]}`, a pair being `{'id', 'prompt' (token ids), 'chosen', 'rejected' (body texts),
'ref_chosen_logp', 'ref_rejected_logp'}`: the frozen reference's summed log-probs of each side,
computed once (`reference_logps`), so the reference is never on device during training.

Each side becomes a row `prompt + body + [EOS]` of `data.seq_len` tokens with `loss_mask` on the
body and EOS. A pair is held out (the run's evaluation) when crc32('dpo-eval:' + prompt id) % 100
is below `dpo.eval_percent`: whole prompts, so no held-out prompt is trained on. A row's
`weight` is 1, and 0 on the rows that pad the last held-out batch.

Training batches (`make_train_iterator`) are a grain dataset: the training pairs shuffled from the
seed and reshuffled every epoch, cut into global batches of `data.batch_size` consecutive pairs,
of which this process keeps its block of rows; so the global batches do not depend on the
process count, and the iterator's position is checkpointed with the train state.
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
    return zlib.crc32(f"dpo-eval:{pair_id}".encode()) % 100 < eval_percent


def read(path: str) -> dict:
    """The `{'pool', 'pairs'}` of a pairs.json."""
    return json.loads(atomic.read_text(path))


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


class _Rows:
    """Random access to pair i of stacked arrays (a grain source)."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self._arrays = arrays

    def __len__(self) -> int:
        return len(next(iter(self._arrays.values())))

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return {k: v[i] for k, v in self._arrays.items()}


class _Block:
    """Rows [lo, hi) of a global batch: this process's block."""

    def __init__(self, lo: int, hi: int):
        self.lo, self.hi = lo, hi

    def __call__(self, batch: dict) -> dict:
        return {k: v[self.lo : self.hi] for k, v in batch.items()}


def make_train_iterator(
    arrays: dict[str, np.ndarray], batch_size: int, *, seed: int, index: int = 0, count: int = 1
) -> grain.DatasetIterator:
    """Endless, checkpointable batches: block `index` of `count` of each global batch of
    `batch_size` pairs (module docstring)."""
    rows = batch_size // count
    ds = grain.MapDataset.source(_Rows(arrays)).shuffle(seed=shuffle_seed(seed)).repeat(None)
    ds = ds.batch(batch_size, drop_remainder=True).map(_Block(index * rows, (index + 1) * rows))
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=0)))


def make_eval_batches(
    arrays: dict[str, np.ndarray], batch_size: int, num_batches: int, *, index=0, count=1
) -> list[dict[str, np.ndarray]]:
    """The first `num_batches` global batches of the held-out pairs in their file order, the
    last one padded with rows of weight 0; this process's block of rows of each."""
    n = len(next(iter(arrays.values())))
    padded = -(-n // batch_size) * batch_size
    pad = {k: np.pad(v, [(0, padded - n)] + [(0, 0)] * (v.ndim - 1)) for k, v in arrays.items()}
    rows = batch_size // count
    lo = index * rows
    return [
        {k: v[i * batch_size + lo : i * batch_size + lo + rows] for k, v in pad.items()}
        for i in range(min(padded // batch_size, num_batches))
    ]


def data_source(run, index: int, count: int):
    """The DPO recipe's `data` hook: (train iterator, eval batches) of `config.dpo.pairs`.

    Raises:
      ValueError: the file is missing, or holds fewer training or held-out pairs than a batch.
    """
    config = run.config
    d, B = config.dpo, config.data.batch_size
    if not atomic.exists(d.pairs):
        raise ValueError(
            f"dpo.pairs={d.pairs!r} does not exist; run the study experiments/dpo.py (its pairs "
            "stage writes one) or pass a pairs.json"
        )
    pairs = read(d.pairs)["pairs"]
    held = [is_held_out(p["id"], d.eval_percent) for p in pairs]
    train = [p for p, h in zip(pairs, held, strict=True) if not h]
    evals = [p for p, h in zip(pairs, held, strict=True) if h]
    for name, part, least in (("training", train, B), ("held-out", evals, 1)):
        if len(part) < least:
            raise ValueError(
                f"dpo.pairs={d.pairs!r} holds {len(part)} {name} pairs, fewer than {least} "
                f"(data.batch_size={B}); change dpo.eval_percent={d.eval_percent}, lower the "
                "batch size or sample more pairs (dpo.prompts, dpo.samples)"
            )
        if "ref_chosen_logp" not in part[0]:
            raise ValueError(f"dpo.pairs={d.pairs!r} has no reference log-probs; rescore it")
    seq_len, tok = config.data.seq_len, run.tokenizer
    train_iter = make_train_iterator(
        stack_pairs(tok, train, seq_len), B, seed=config.seed, index=index, count=count
    )
    eval_local = make_eval_batches(
        stack_pairs(tok, evals, seq_len), B, config.train.eval_batches, index=index, count=count
    )
    return train_iter, eval_local
