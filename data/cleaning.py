"""The cleaning a corpus goes through when its TFDS dataset is built, and what it removed.

Order: quality filters on each file (`data/filters.py`), then, per split, exact and near-duplicate
removal keeping the first copy by path (`data/dedup.py`), then decontamination: training documents
that duplicate a validation document (exact, or Jaccard >= the threshold) are dropped from train,
so the validation set is never edited by what happens to be in train. A final check counts the
train/validation near-duplicate pairs left; with decontamination on it must be zero, and the build
fails otherwise.
"""

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import ml_collections

from data import dedup, filters

SPLITS = ("train", "validation")


@dataclasses.dataclass(frozen=True)
class Cleaning:
    """Settings of the cleaning steps (the `data.filters` and `data.dedup` blocks)."""

    quality: filters.FilterConfig = filters.FilterConfig()
    near: dedup.DedupConfig = dedup.DedupConfig()  # similarity, for dedup and decontamination
    deduplicate: bool = True
    decontaminate: bool = True


DEFAULT = Cleaning()


def default_dedup_config() -> ml_collections.ConfigDict:
    """The `data.dedup` block: on, Jaccard 0.8 over word 5-grams, 128 MinHash permutations."""
    d = dataclasses.asdict(dedup.DedupConfig())
    d.pop("seed")
    return ml_collections.ConfigDict(dict(enabled=True, decontaminate=True, **d))


def from_config(data_cfg: ml_collections.ConfigDict) -> Cleaning:
    """Reads `data.filters` and `data.dedup`.

    Raises:
      ValueError: naming the field, for an unknown filter or an out-of-range setting.
    """
    d = data_cfg.dedup
    try:
        near = dedup.DedupConfig(
            num_perm=d.num_perm, shingle_words=d.shingle_words, threshold=d.threshold
        )
    except ValueError:
        raise ValueError(
            f"data.dedup.threshold={d.threshold}, num_perm={d.num_perm}, "
            f"shingle_words={d.shingle_words}: need a threshold in (0, 1] and counts >= 1."
        ) from None
    return Cleaning(
        quality=filters.config_from_dict(data_cfg.filters),
        near=near,
        deduplicate=bool(d.enabled),
        decontaminate=bool(d.decontaminate),
    )


@dataclasses.dataclass
class Outcome:
    """What `clean_corpus` kept per split (document indices, ascending) and the counters."""

    kept: dict[str, list[int]]
    stats: dict[str, Any]
    report: str


def clean_corpus(
    files: Sequence[tuple[str, bytes]], split_of_path, cleaning: Cleaning
) -> tuple[list[str | None], Outcome]:
    """Filters, deduplicates and decontaminates `(relative path, raw bytes)` files.

    Args:
      files: the corpus files, sorted by path (the first copy of a duplicate is kept).
      split_of_path: `path -> 'train' | 'validation'`.
      cleaning: the settings.

    Returns:
      The cleaned text of every file (None where a filter removed it), and the outcome.

    Raises:
      RuntimeError: if decontamination left a train/validation near-duplicate pair (a bug).
    """
    start = time.perf_counter()
    freport = filters.FilterReport()
    texts = [filters.clean(raw, path, cleaning.quality, freport) for path, raw in files]
    kept = {
        s: [i for i, t in enumerate(texts) if t is not None and split_of_path(files[i][0]) == s]
        for s in SPLITS
    }
    stats: dict[str, Any] = dict(freport.as_metadata())
    lines = ["Quality filters:", freport.format()]
    config = cleaning.near
    dropped = []
    if cleaning.deduplicate or cleaning.decontaminate:
        sketches = dedup.sketch([t or "" for t in texts], config)  # removed files: empty sketches
        if cleaning.deduplicate:
            for split in SPLITS:
                result = dedup.deduplicate(sketches, config, kept[split])
                kept[split] = result.keep
                for key in ("exact_docs", "exact_bytes", "near_docs", "near_bytes"):
                    stats[f"dedup_{split}_{key}"] = getattr(result, key)
                dropped += [
                    (files[d][0], why, files[of][0]) for d, (why, of) in result.dropped.items()
                ]
                lines.append(
                    f"Dedup {split}: {result.exact_docs} exact duplicates "
                    f"({result.exact_bytes:,} bytes), {result.near_docs} near duplicates "
                    f"({result.near_bytes:,} bytes) at Jaccard >= {config.threshold} removed"
                )
        if cleaning.decontaminate:
            found = dedup.decontaminate(sketches, config, kept["train"], kept["validation"])
            kept["train"] = [i for i in kept["train"] if i not in found]
            dropped += [(files[t][0], "contaminates", files[v][0]) for t, v in found.items()]
            stats["decontaminated_train_docs"] = len(found)
            stats["decontaminated_train_bytes"] = int(sum(len(files[t][1]) for t in found))
        left = dedup.near_duplicate_pairs(
            sketches, config, cross=(kept["train"], kept["validation"])
        )
        stats["train_validation_near_duplicates"] = len(left)
        done = (
            f"{stats['decontaminated_train_docs']} train documents that duplicate a validation "
            "document removed"
            if cleaning.decontaminate
            else "off"
        )
        lines.append(
            f"Decontamination: {done}; train/validation near-duplicate pairs left: {len(left)}"
        )
        if cleaning.decontaminate and left:
            raise RuntimeError(f"Decontamination left train/validation near duplicates: {left[:5]}")
    stats["cleaning_dropped"] = [list(d) for d in sorted(dropped)]
    stats["cleaning_seconds"] = round(time.perf_counter() - start, 2)
    for split in SPLITS:
        stats[f"{split}_files"] = len(kept[split])
        stats[f"{split}_bytes"] = int(sum(len(texts[i].encode()) for i in kept[split]))
    lines.append(
        f"Kept {stats['train_files']:,} train ({stats['train_bytes']:,} bytes) and "
        f"{stats['validation_files']:,} validation ({stats['validation_bytes']:,} bytes) documents "
        f"of {len(files):,} files; cleaning took {stats['cleaning_seconds']:.1f} s."
    )
    return texts, Outcome(kept=kept, stats=stats, report="\n".join(lines))
