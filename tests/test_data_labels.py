"""Package-classification task from the corpus: classes, file-disjoint split, baseline."""

import zlib

import numpy as np

from data import labels
from data.instructions import stdlib_files


def test_classes_snippets_and_split_are_deterministic_and_disjoint():
    files = [
        ("a/x.py", "x" * 600),
        ("a/y.py", "y" * 300),
        ("a/z.py", "z" * 100),  # shorter than half a snippet: no example
        ("b/u.py", "u" * 512),
        ("c/v.py", "v" * 512),
        ("top.py", "t" * 512),
    ]
    assert labels.classes(files, 2) == ["a", "b"]
    both = labels.snippets(files, ["a", "b"], "train", val_percent=0)
    assert both == [("x" * 256, 0), ("x" * 256, 0), ("y" * 256, 0), ("u" * 256, 1), ("u" * 256, 1)]
    assert labels.majority_baseline(both, [("?", 0), ("?", 1)]) == (0, 0.5)


def test_stdlib_task_is_file_disjoint():
    """Every example is a window of a file of its own split (crc32 of the path, 20% held out),
    labelled with its package; the baseline is the training majority's held-out accuracy."""
    files = [(p, t) for p, t in stdlib_files() if p.split("/")[0] in ("json", "email", "asyncio")]
    names = labels.classes(files, 3)
    assert sorted(names) == ["asyncio", "email", "json"]
    train = labels.snippets(files, names, "train")
    val = labels.snippets(files, names, "validation")
    expected = {"train": [], "validation": []}
    held_out_files = 0
    for path, text in files:
        split = "validation" if zlib.crc32(path.encode()) % 100 < 20 else "train"
        held_out_files += split == "validation"
        data, label = text.encode(), names.index(path.split("/")[0])
        for k in range(4):
            window = data[256 * k : 256 * (k + 1)]
            if len(window) >= 128:
                expected[split].append((window.decode(errors="replace"), label))
    assert abs(held_out_files / len(files) - 0.2) < 0.08
    assert train == expected["train"] and val == expected["validation"] and val
    train_y, val_y = np.array([y for _, y in train]), np.array([y for _, y in val])
    majority = int(np.bincount(train_y).argmax())
    assert labels.majority_baseline(train, val) == (majority, np.mean(val_y == majority))
    assert len(set(val_y.tolist())) == 3  # every class is held out, so the baseline is < 1
