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

Training runs read the set through grain (`make_sft_dataset`, selected by `data.source =
'instructions'` in data/pipeline.py): the stdlib pairs are extracted once and cached as JSON under
the data dir (extraction parses the whole stdlib: about a minute here), examples longer than
`data.seq_len` are dropped (a cut-off response would teach functions that never end), and the rest
are shuffled per epoch, sharded over processes and packed first-fit with grain, so the iterator
checkpoints and resumes like the text pipeline's.

`split_header` cuts a response into its header (decorators and `def` line(s)) and body: the DPO
prompts (prefs/sampling.py) are the instruction prompt plus the header, the model writes the body.
"""

import ast
import json
import os
import sys
import textwrap
import zlib
from collections.abc import Iterable, Sequence

import grain
import ml_collections
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


def split_header(response: str) -> tuple[str, str] | None:
    """(header, body) of a response: header = the lines before the first body statement (with
    decorators and a multi-line signature), body = the rest; None when the body starts on the
    `def` line or the response does not parse as one function."""
    try:
        tree = ast.parse(response)
    except (SyntaxError, ValueError):
        return None
    if len(tree.body) != 1 or not isinstance(tree.body[0], (ast.FunctionDef, ast.AsyncFunctionDef)):
        return None
    fn = tree.body[0]
    first = fn.body[0].lineno  # the docstring is gone, so this is the first real statement
    if first <= fn.lineno:
        return None
    lines = response.splitlines(keepends=True)
    return "".join(lines[: first - 1]), "".join(lines[first - 1 :])


def _cache_path(data_cfg) -> str:
    from data.corpus import resolve_data_dir

    version = "py{}.{}.{}".format(*sys.version_info[:3])
    return os.path.join(resolve_data_dir(data_cfg), "instructions", f"stdlib-{version}.json")


def load_pairs(data_cfg, split: str, val_percent: int = 5) -> list[dict]:
    """The stdlib instruction pairs of `split`, extracted once and cached under the data dir."""
    from common import atomic

    path = _cache_path(data_cfg)
    if os.path.exists(path):
        with open(path) as f:
            pairs = json.load(f)
    else:
        pairs = [p for f in stdlib_files() for p in extract_pairs(f[1], f[0])]
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic.write_json(path, pairs)
    return [p for p in pairs if split_of(p["id"], val_percent) == split]


def fitting_examples(
    pairs: Sequence[dict], tokenizer: Tokenizer, seq_len: int
) -> list[dict[str, np.ndarray]]:
    """`{'tokens', 'loss_mask'}` of the pairs whose formatted example fits `seq_len` tokens."""
    out = []
    for pair in pairs:
        tokens, mask = format_pair(pair, tokenizer)
        if len(tokens) <= seq_len:
            out.append({"tokens": tokens, "loss_mask": mask})
    return out


def _examples(data_cfg, split: str) -> list[dict[str, np.ndarray]]:
    from data.vocabulary import tokenizer_from_config

    if data_cfg.glob or data_cfg.dataset != "stdlib":
        raise ValueError(
            "data.source='instructions' builds its pairs from the stdlib; set data.dataset="
            "'stdlib' and data.glob=''"
        )
    examples = fitting_examples(
        load_pairs(data_cfg, split), tokenizer_from_config(data_cfg), data_cfg.seq_len
    )
    if not examples:
        raise ValueError(f"no instruction pair of {split} fits data.seq_len={data_cfg.seq_len}")
    return examples


def _packed(examples, data_cfg, rows: int, *, seed, num_epochs, index, count) -> grain.IterDataset:
    ds = grain.MapDataset.source(examples)
    if seed is not None:
        ds = ds.shuffle(seed=int(np.random.SeedSequence(seed).generate_state(1)[0]))
    ds = ds.repeat(num_epochs)[index::count]
    from data.batching import pack_and_batch

    pieces = ds.to_iter_dataset(grain.ReadOptions(num_threads=0))
    return pack_and_batch(pieces, data_cfg.seq_len, rows, extra=("loss_mask",))


def make_sft_dataset(
    data_cfg: ml_collections.ConfigDict,
    *,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    num_epochs: int | None = None,
) -> grain.IterDataset:
    """Packed SFT training batches (tokens, segment_ids, positions, loss_mask) of this process."""
    from data.batching import local_batch_size

    rows = local_batch_size(data_cfg, process_count)
    return _packed(
        _examples(data_cfg, "train"),
        data_cfg,
        rows,
        seed=seed,
        num_epochs=num_epochs,
        index=process_index,
        count=process_count,
    )


def make_sft_eval_batches(
    data_cfg: ml_collections.ConfigDict,
    *,
    num_batches: int,
    process_index: int = 0,
    process_count: int = 1,
) -> list[dict[str, np.ndarray]]:
    """The first `num_batches` packed batches of the validation pairs (fixed order); every
    process packs the same global batches and keeps its own block of rows."""
    import itertools

    from data.batching import local_batch_size

    rows = local_batch_size(data_cfg, process_count)
    ds = _packed(
        _examples(data_cfg, "validation"),
        data_cfg,
        data_cfg.batch_size,
        seed=0,
        num_epochs=1,
        index=0,
        count=1,
    )
    lo = process_index * rows
    return [
        {k: v[lo : lo + rows] for k, v in batch.items()}
        for batch in itertools.islice(ds, num_batches)
    ]
