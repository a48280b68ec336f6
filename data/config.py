"""Default data configuration (the `data` block of an experiment config)."""

import dataclasses

import ml_collections

from data.cleaning import default_dedup_config
from data.filters import FILTER_NAMES, FilterConfig

_FRACTION = {"type": float, "min": 0.0, "max": 1.0}

# Type, range and allowed values of every `data` field (the keys: models/sizes.py MODEL_FIELDS).
# `dataset`, `tokenizer` and `task.name` are registry names, checked by train/validate.py
# against TFDS, data/tokenizer.py and data/tasks.py.
DATA_FIELDS = {
    "source": {"choices": ("text", "instructions")},
    "dataset": {"type": str},
    "glob": {"type": str},
    "data_dir": {"type": str},
    "val_fraction": {"type": float, "above": 0.0, "below": 1.0},
    "text_key": {"type": str},
    "filters": {
        "min_bytes": {"type": int, "min": 0},
        "max_bytes": {"type": int, "min": "min_bytes"},
        "max_nonprintable_fraction": _FRACTION,
        "max_repeated_line_fraction": _FRACTION,
        "boilerplate_markers": {"type": tuple, "items": {"type": str}},
        "strip_html": {"type": bool},
        "enabled": {"type": tuple, "items": {"choices": FILTER_NAMES}},
    },
    "dedup": {
        "enabled": {"type": bool},
        "decontaminate": {"type": bool},
        "num_perm": {"type": int, "min": 1},
        "shingle_words": {"type": int, "min": 1},
        "threshold": {"type": float, "above": 0.0, "max": 1.0},
    },
    "tokenizer": {"type": str},
    "vocab_size": {"type": int, "min": 1},
    "num_sentinels": {"type": int, "min": 0},
    "seq_len": {"type": int, "min": 2},
    "batch_size": {"type": int, "min": 1},
    "shards": {"type": int, "min": 0},
    "task": {
        "name": {"type": str},
        "root": {"type": str},
        "num_classes": {"type": int, "min": 2},
        "snippets_per_file": {"type": int, "min": 1},
        "val_percent": {"type": int, "above": 0, "below": 100},
        "target_len": {"type": int, "min": 2},
    },
}


def default_data_config() -> ml_collections.ConfigDict:
    """Returns the data config with every field the `data/` package reads.

    Fields:
      source: 'text' (documents of the corpus, packed for language modelling) or 'instructions'
        (docstring -> source pairs of the stdlib with `loss_mask` on the response tokens: data/
        instructions.py; supervised fine-tuning with objective='causal_lm').
      dataset: 'stdlib' (this interpreter's standard-library source, built locally) or a TFDS
        catalog name such as 'lm1b' or 'c4/en' (read with `tfds.data_source`).
      glob: if non-empty, a glob of local text files (recursive `**` allowed); overrides `dataset`.
      data_dir: TFDS data dir; '' means `$SCALELAB_DATA_DIR`, else `~/.cache/scalelab/tfds`.
      val_fraction: fraction of local files hashed into the validation split.
      text_key: feature holding the text in catalog datasets.
      filters: quality-filter settings applied when a local corpus is built (data/filters.py).
      dedup: exact and near-duplicate removal (`enabled`) and train/validation decontamination
        (`decontaminate`) at Jaccard >= `threshold` over word `shingle_words`-grams, estimated with
        `num_perm` MinHash permutations (data/dedup.py, data/cleaning.py).
      tokenizer: 'byte', 'bpe', 'unigram' (trained on the train split on first use) or the path of
        a SentencePiece .model file (data/vocabulary.py).
      vocab_size: size of a trained SentencePiece vocabulary, specials included.
      num_sentinels: sentinel ids reserved by the tokenizer (span corruption).
      seq_len: tokens per packed row (T).
      batch_size: global batch size in rows; split evenly over processes.
      shards: the training stream is read as this many shards of batch_size / shards rows
        each, process i of n reading shards i * shards / n ... (i + 1) * shards / n - 1, so runs
        on different process counts with the same `shards` see the same global batches; 0 means
        one shard per process.
      task: labelled fine-tuning data instead of packed text (data/tasks.py): `name` '' (none),
        'packages' (classification) or 'naming' (seq2seq), and the task's fields.
    """
    cfg = ml_collections.ConfigDict()
    cfg.source = "text"
    cfg.dataset = "stdlib"
    cfg.glob = ""
    cfg.data_dir = ""
    cfg.val_fraction = 0.05
    cfg.text_key = "text"
    cfg.filters = ml_collections.ConfigDict(dataclasses.asdict(FilterConfig()))
    cfg.dedup = default_dedup_config()
    cfg.tokenizer = "byte"
    cfg.vocab_size = 4096
    cfg.num_sentinels = 100
    cfg.seq_len = 256
    cfg.batch_size = 16
    cfg.shards = 0

    cfg.task = default_task_config()
    return cfg


def default_task_config() -> ml_collections.ConfigDict:
    """The `data.task` block ('' = ordinary packed LM data)."""
    return ml_collections.ConfigDict(
        {
            "name": "",  # '' | 'packages' | 'naming' (data/tasks.py TASKS)
            "root": "",  # directory of .py files ('' = the stdlib)
            "num_classes": 8,  # packages: the most frequent packages by file count
            "snippets_per_file": 8,  # packages: leading windows of T - 1 bytes per file
            "val_percent": 20,  # held-out share of files
            "target_len": 32,  # naming: decoder tokens per row (name + EOS)
        }
    )
