"""A seq2seq task built from the corpus: name a function from its docstring and body.

Every documented function (or method) of a source file (data/instructions.py `extract_pairs`) gives
one pair: the input is the docstring, a blank line, then the function's source with the name in
its `def` line replaced by `_`; the target is the name. Other mentions of the name (a recursive
call, say) are left in the body: copying them is part of the task. Files of the stdlib's own test
suites (`test/`, `*/idle_test/`, `*/tests/`) are left out, since their `test_*` names are mostly
arbitrary. The split is by file (`data.labels.split_of`, crc32 of the path), so no file gives
pairs to both train and held-out; `majority_baseline` is the exact match of always answering the
most frequent training name.
"""

import collections
import re
from collections.abc import Sequence

from data.instructions import extract_pairs
from data.labels import split_of

_DEF = re.compile(r"(\bdef\s+)(\w+)")
_TEST_DIRS = ("test/", "idle_test/", "tests/")


def is_test_file(path: str) -> bool:
    return path.startswith(_TEST_DIRS[0]) or any(f"/{d}" in path for d in _TEST_DIRS)


def pairs(
    files: Sequence[tuple[str, str]], split: str, val_percent: int = 20
) -> list[tuple[str, str]]:
    """(input text, target name) pairs of `split` (module docstring), in file order."""
    out = []
    for path, text in files:
        if is_test_file(path) or split_of(path, val_percent) != split:
            continue
        for pair in extract_pairs(text, path):
            name = pair["id"].rpartition(":")[2].rpartition(".")[2]  # path:Class.name
            masked, n = _DEF.subn(r"\1_", pair["response"], count=1)
            if n:
                out.append((f"{pair['instruction']}\n\n{masked}", name))
    return out


def majority_baseline(
    train: Sequence[tuple[str, str]], held_out: Sequence[tuple[str, str]]
) -> tuple[str, float]:
    """(most frequent training name, its exact match on `held_out`)."""
    name = collections.Counter(y for _, y in train).most_common(1)[0][0]
    return name, sum(y == name for _, y in held_out) / max(len(held_out), 1)
