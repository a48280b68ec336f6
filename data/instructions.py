"""An instruction-tuning set built from the corpus itself, and packing with response-only losses.

Every function (or method) of a Python source file that has a docstring gives one pair: the
instruction is the cleaned docstring, the response is the function's source without the
docstring. A pair is in the validation split when crc32('path:qualified name') % 100 is below
`val_percent`, so the split is deterministic and independent of the file order.

`format_pair` lays a pair out as

    [BOS] "### Instruction:\\n" docstring "\\n### Response:\\n" | source [EOS]

with `loss_mask` 1 on the response tokens and EOS only; `pack` fills rows of T tokens first-fit
(each example its own segment, like data/pipeline.py), so the causal-LM loss of
objectives/causal_lm.py (which honours `loss_mask`) is the SFT loss.
"""

import ast
import os
import textwrap
import zlib
from collections.abc import Iterable, Sequence

import numpy as np

from data.tokenizer import Tokenizer

PROMPT = "### Instruction:\n{instruction}\n### Response:\n"


def extract_pairs(source: str, path: str) -> list[dict]:
    """{'id', 'instruction', 'response'} for every documented function in `source`."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    lines = source.splitlines(keepends=True)
    pairs = []

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                doc = ast.get_docstring(child)
                body = child.body
                if doc and len(body) > 1:
                    start = (child.decorator_list[0] if child.decorator_list else child).lineno
                    keep = (
                        lines[start - 1 : body[0].lineno - 1]
                        + lines[body[0].end_lineno : child.end_lineno]
                    )
                    response = textwrap.dedent("".join(keep)).strip("\n")
                    pairs.append(
                        {"id": f"{path}:{name}", "instruction": doc.strip(), "response": response}
                    )
                visit(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")

    visit(tree, "")
    return pairs


def split_of(pair_id: str, val_percent: int = 5) -> str:
    return "validation" if zlib.crc32(pair_id.encode()) % 100 < val_percent else "train"


def instruction_set(
    files: Iterable[tuple[str, str]], split: str, val_percent: int = 5
) -> list[dict]:
    """The pairs of `split` from `(relative path, text)` files, in file then source order."""
    return [
        p
        for path, text in files
        for p in extract_pairs(text, path)
        if split_of(p["id"], val_percent) == split
    ]


def stdlib_files(subdir: str = "") -> list[tuple[str, str]]:
    """`(relative path, text)` of the stdlib `.py` files under `subdir` (no site-packages)."""
    root = os.path.join(os.path.dirname(os.__file__), subdir)
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "site-packages")
        for f in sorted(filenames):
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                with open(path, "rb") as fh:
                    text = fh.read().decode("utf-8", errors="replace")
                out.append((os.path.relpath(path, root), text))
    return out


def format_pair(pair: dict, tokenizer: Tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, loss_mask) of one pair (module docstring)."""
    prompt = tokenizer.encode(PROMPT.format(instruction=pair["instruction"]))
    response = tokenizer.encode(pair["response"])
    tokens = np.concatenate([[tokenizer.bos_id], prompt, response, [tokenizer.eos_id]])
    mask = np.concatenate([np.zeros(1 + len(prompt)), np.ones(len(response) + 1)])
    return tokens.astype(np.int32), mask.astype(np.int32)


def pack(examples: Sequence[tuple[np.ndarray, np.ndarray]], seq_len: int) -> dict:
    """First-fit packing into rows: tokens, segment_ids, positions, loss_mask [R, seq_len].

    Examples longer than `seq_len` are cut to their first `seq_len` tokens.
    """
    rows: list[list] = []  # per row: list of (tokens, mask)
    free: list[int] = []
    for tokens, mask in examples:
        tokens, mask = tokens[:seq_len], mask[:seq_len]
        for r, room in enumerate(free):
            if room >= len(tokens):
                rows[r].append((tokens, mask))
                free[r] -= len(tokens)
                break
        else:
            rows.append([(tokens, mask)])
            free.append(seq_len - len(tokens))
    out = {k: np.zeros((len(rows), seq_len), np.int32) for k in ("tokens", "segment_ids")}
    out |= {k: np.zeros((len(rows), seq_len), np.int32) for k in ("positions", "loss_mask")}
    for r, row in enumerate(rows):
        at = 0
        for s, (tokens, mask) in enumerate(row, start=1):
            n = len(tokens)
            out["tokens"][r, at : at + n] = tokens
            out["segment_ids"][r, at : at + n] = s
            out["positions"][r, at : at + n] = np.arange(n)
            out["loss_mask"][r, at : at + n] = mask
            at += n
    return out
