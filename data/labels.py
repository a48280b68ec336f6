"""A classification task whose labels come from the corpus: which top-level stdlib package a
snippet of source comes from.

Files are grouped by the first component of their path (`asyncio/events.py` -> `asyncio`); the
`num_classes` packages with the most files are the classes (ties broken by name), files of other
packages and top-level modules are left out. Each file gives its first `snippets_per_file`
windows of `snippet_bytes` bytes. The split is by file (crc32 of the path), so no file
contributes to both train and validation; `majority_baseline` is the accuracy of always
answering the most frequent training class, the number a fine-tuned classifier must beat.
"""

import collections
import zlib
from collections.abc import Sequence


def classes(files: Sequence[tuple[str, str]], num_classes: int) -> list[str]:
    """The `num_classes` packages with the most files (sorted by count, then name)."""
    counts = collections.Counter(p.split("/")[0] for p, _ in files if "/" in p)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    if len(ranked) < num_classes:
        raise ValueError(f"num_classes={num_classes} but the corpus has {len(ranked)} packages")
    return [name for name, _ in ranked[:num_classes]]


def split_of(path: str, val_percent: int = 20) -> str:
    return "validation" if zlib.crc32(path.encode()) % 100 < val_percent else "train"


def snippets(
    files: Sequence[tuple[str, str]],
    labels: Sequence[str],
    split: str,
    *,
    snippet_bytes: int = 256,
    snippets_per_file: int = 4,
    val_percent: int = 20,
) -> list[tuple[str, int]]:
    """(text, class index) examples of `split` (module docstring)."""
    index = {name: i for i, name in enumerate(labels)}
    out = []
    for path, text in files:
        package = path.split("/")[0] if "/" in path else None
        if package not in index or split_of(path, val_percent) != split:
            continue
        data = text.encode("utf-8", errors="replace")
        for k in range(snippets_per_file):
            chunk = data[k * snippet_bytes : (k + 1) * snippet_bytes]
            if len(chunk) < snippet_bytes // 2:
                break
            out.append((chunk.decode("utf-8", errors="replace"), index[package]))
    return out


def majority_baseline(train: Sequence[tuple[str, int]], held_out: Sequence[tuple[str, int]]):
    """(majority class of `train`, its accuracy on `held_out`)."""
    majority = collections.Counter(y for _, y in train).most_common(1)[0][0]
    return majority, sum(y == majority for _, y in held_out) / max(len(held_out), 1)
