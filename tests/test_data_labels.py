"""Package-classification task from the corpus: classes, file-disjoint split, baseline."""

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
    files = [(p, t) for p, t in stdlib_files() if p.split("/")[0] in ("json", "email", "asyncio")]
    names = labels.classes(files, 3)
    assert sorted(names) == ["asyncio", "email", "json"]
    train = labels.snippets(files, names, "train")
    val = labels.snippets(files, names, "validation")
    assert train and val
    train_files = {p for p, _ in files if labels.split_of(p) == "train"}
    val_files = {p for p, _ in files if labels.split_of(p) == "validation"}
    assert not train_files & val_files
    _, acc = labels.majority_baseline(train, val)
    assert 0 < acc < 1
