"""Labelled fine-tuning data from the corpus, selected by `data.task.name` (batches, not packing).

| task       | objective      | example                                   | labels from        |
| ---------- | -------------- | ----------------------------------------- | ------------------ |
| packages   | classification | a snippet -> its top-level stdlib package | data/labels.py     |
| naming     | seq2seq        | docstring + body -> the function's name   | data/naming.py     |

One example per row, no packing, so a batch is exactly `data.batch_size` examples:
  packages: tokens = [BOS] + snippet (cut to T), segment_ids 1 on real tokens, positions, labels [B]
            (the encoder pools the first token, so BOS plays BERT's [CLS]);
  naming:   inputs = text (cut to T - 1) + [EOS], targets = name (cut to `task.target_len` - 1)
            + [EOS], each with segment_ids and positions (models/encdec.py shifts targets right).
Files come from `data.task.root` ('' = this interpreter's stdlib); the split is by file (crc32 of
the relative path, `task.val_percent`), so no file gives examples to both sides. Training batches
are a grain dataset (shuffled, reshuffled each epoch, process i of n takes every n-th example, so
the iterator checkpoints with the train state); evaluation is the held-out split in one fixed
shuffled order (the same for every run), its last batch padded with ignored rows (segment 0,
label -1).
"""

import functools

import grain
import numpy as np

from data import labels, naming
from data.batching import EVAL_SEED, local_batch_size, shuffle_seed
from data.instructions import stdlib_files
from data.tokenizer import Tokenizer

TASKS = {"packages": "classification", "naming": "seq2seq"}  # task -> the objective it trains
_SEQ2SEQ_KEYS = [
    f"{s}{k}" for s in ("inputs", "targets") for k in ("", "_segment_ids", "_positions")
]


def check(config) -> str:
    """The task of `config` ('' for none), checked against `config.objective`.

    Raises:
      ValueError: naming the field and the fix.
    """
    task = config.data.task
    name, objective = task.name, config.objective
    if name and name not in TASKS:
        raise ValueError(f"data.task.name={name!r} is unknown; choose one of {sorted(TASKS)}")
    if name and TASKS[name] != objective:
        raise ValueError(
            f"data.task.name={name!r} trains objective={TASKS[name]!r}, not {objective!r}"
        )
    if not name and objective in TASKS.values():
        wanted = next(t for t, o in TASKS.items() if o == objective)
        raise ValueError(
            f"objective={objective!r} needs labelled data: set data.task.name={wanted!r}"
        )
    if name == "packages" and config.model.num_classes != task.num_classes:
        raise ValueError(
            f"model.num_classes={config.model.num_classes} must equal data.task.num_classes="
            f"{task.num_classes}"
        )
    return name


def batch_keys(task_cfg) -> dict[str, int]:
    """Batch key -> rank, as the loop builds its shardings from."""
    if task_cfg.name == "packages":
        return {"tokens": 2, "segment_ids": 2, "positions": 2, "labels": 1}
    return dict.fromkeys(_SEQ2SEQ_KEYS, 2)


@functools.lru_cache(maxsize=4)
def _files(root: str) -> tuple[tuple[str, str], ...]:
    # stdlib_files joins its argument to the stdlib directory: an absolute root replaces it.
    return tuple(stdlib_files(root))


def examples(data_cfg, split: str) -> list[tuple[str, int | str]]:
    """(text, label) of `split`: a class index (packages) or a name (naming)."""
    task = data_cfg.task
    files = _files(task.root)
    if task.name == "packages":
        names = labels.classes(files, task.num_classes)
        return labels.snippets(
            files,
            names,
            split,
            snippet_bytes=data_cfg.seq_len - 1,
            snippets_per_file=task.snippets_per_file,
            val_percent=task.val_percent,
        )
    return naming.pairs(files, split, task.val_percent)


def baseline(data_cfg) -> tuple[int | str, float]:
    """(majority training label, its accuracy / exact match on the held-out split)."""
    train, held_out = examples(data_cfg, "train"), examples(data_cfg, "validation")
    module = labels if data_cfg.task.name == "packages" else naming
    return module.majority_baseline(train, held_out)


def held_out(data_cfg) -> list[tuple[str, int | str]]:
    """The held-out examples in evaluation order: one fixed shuffle (not the run seed's), so the
    first k batches are a uniform sample of the split."""
    pairs = examples(data_cfg, "validation")
    return [pairs[i] for i in np.random.default_rng(EVAL_SEED).permutation(len(pairs))]


def _row(ids: np.ndarray, length: int) -> dict[str, np.ndarray]:
    n = min(len(ids), length)
    out = {k: np.zeros(length, np.int32) for k in ("", "_segment_ids", "_positions")}
    out[""][:n], out["_segment_ids"][:n], out["_positions"][:n] = ids[:n], 1, np.arange(n)
    return out


def encode(data_cfg, tokenizer: Tokenizer, pairs) -> dict[str, np.ndarray]:
    """Arrays [N, ...] of the batch keys for `pairs` (module docstring)."""
    task, T = data_cfg.task, data_cfg.seq_len
    rows = []
    for text, label in pairs:
        if task.name == "packages":
            ids = np.concatenate([[tokenizer.bos_id], tokenizer.encode(text)[: T - 1]])
            r = _row(ids, T)
            rows.append(
                {"tokens": r[""], "segment_ids": r["_segment_ids"], "positions": r["_positions"]}
                | {"labels": np.int32(label)}
            )
        else:
            eos = [tokenizer.eos_id]
            inputs = np.concatenate([tokenizer.encode(text)[: T - 1], eos])
            targets = np.concatenate([tokenizer.encode(label)[: task.target_len - 1], eos])
            row = {}
            for side, ids, n in (("inputs", inputs, T), ("targets", targets, task.target_len)):
                row |= {f"{side}{k}": v for k, v in _row(ids, n).items()}
            rows.append(row)
    keys = batch_keys(task)
    if not rows:
        raise ValueError(f"data.task.name={task.name!r} has no examples under {task.root!r}")
    return {k: np.stack([r[k] for r in rows]).astype(np.int32) for k in keys}


class _Rows:
    """Random access to example i of encoded arrays (a grain source)."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self._arrays = arrays

    def __len__(self) -> int:
        return len(next(iter(self._arrays.values())))

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return {k: v[i] for k, v in self._arrays.items()}


def make_train_iterator(
    data_cfg, tokenizer: Tokenizer, *, seed: int, process_index: int = 0, process_count: int = 1
) -> grain.DatasetIterator:
    """Endless, checkpointable batches of B_local training examples for this process."""
    rows = local_batch_size(data_cfg, process_count)
    arrays = encode(data_cfg, tokenizer, examples(data_cfg, "train"))
    ds = grain.MapDataset.source(_Rows(arrays)).shuffle(seed=shuffle_seed(seed)).repeat(None)
    ds = ds[process_index::process_count].batch(rows, drop_remainder=True)
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=0)))


def make_eval_batches(
    data_cfg,
    tokenizer: Tokenizer,
    *,
    num_batches: int,
    process_index: int = 0,
    process_count: int = 1,
) -> list[dict[str, np.ndarray]]:
    """The first `num_batches` global batches of the held-out split; this process's rows."""
    B = data_cfg.batch_size
    rows = local_batch_size(data_cfg, process_count)
    arrays = encode(data_cfg, tokenizer, held_out(data_cfg))
    n = len(arrays["segment_ids" if "segment_ids" in arrays else "inputs_segment_ids"])
    padded = -(-n // B) * B
    pad = {k: np.pad(v, [(0, padded - n)] + [(0, 0)] * (v.ndim - 1)) for k, v in arrays.items()}
    if "labels" in pad:
        pad["labels"][n:] = -1
    lo = process_index * rows
    return [
        {k: v[i * B + lo : i * B + lo + rows] for k, v in pad.items()}
        for i in range(min(num_batches, padded // B))
    ]
