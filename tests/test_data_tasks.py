"""Fine-tuning data from the corpus (data/tasks.py, data/naming.py): file-disjoint splits, the
encoder-decoder batch layout, config checks."""

import os
import re

import numpy as np
import pytest

from data import naming, tasks
from data.config import default_data_config
from data.tokenizer import get_tokenizer
from experiments.classify import get_config as classify_config
from models.encdec import shift_right


def write_package_tree(root: str, files_per_package: dict[str, int]) -> None:
    """Packages of tiny documented modules; every function's docstring and body name its file."""
    for package, n in files_per_package.items():
        os.makedirs(os.path.join(root, package), exist_ok=True)
        for i in range(n):
            rel = f"{package}/m{i}.py"
            body = "".join(
                f'def f{j}_{package}{i}(x):\n    """From {rel} #{j}."""\n    return x + {j}\n\n'
                for j in range(3)
            )
            with open(os.path.join(root, rel), "w") as f:
                f.write(body * 2)


def _data_cfg(root, name, seq_len=64):
    cfg = default_data_config()
    cfg.seq_len = seq_len
    cfg.task.root, cfg.task.name = root, name
    cfg.task.num_classes, cfg.task.val_percent, cfg.task.snippets_per_file = 2, 50, 3
    return cfg


def _source_files(pairs):
    """The files the examples say they come from (every text names its file; a snippet may cut a
    name, and a cut name does not match)."""
    return {m for text, _ in pairs for m in re.findall(r"\b[abc]/m\d+\.py", text)}


@pytest.mark.parametrize("name", ["packages", "naming"])
def test_split_never_shares_a_file(tmp_path, name):
    write_package_tree(str(tmp_path), {"a": 8, "b": 6, "c": 2})
    cfg = _data_cfg(str(tmp_path), name)
    train, held = tasks.examples(cfg, "train"), tasks.examples(cfg, "validation")
    assert train and held
    train_files, held_files = _source_files(train), _source_files(held)
    assert train_files and held_files and not train_files & held_files
    assert sorted(tasks.held_out(cfg)) == sorted(held)  # same examples, fixed shuffled order
    if name == "packages":  # c is the third package by file count: left out
        assert {y for _, y in train} == {0, 1} and all(not f.startswith("c/") for f in train_files)
    else:
        assert all(y.startswith("f") and "def _(x)" in t for t, y in train)


def test_naming_pairs_mask_the_def_line_only_and_skip_test_suites():
    src = 'def walk(n):\n    """Walk."""\n    return walk(n - 1)\n'
    files = [("pkg/m.py", src), ("test/test_m.py", src), ("pkg/tests/t.py", src)]
    pairs = naming.pairs(files, "train", val_percent=0)
    assert pairs == [("Walk.\n\ndef _(n):\n    return walk(n - 1)", "walk")]
    assert naming.majority_baseline(pairs, [("?", "walk"), ("?", "run")]) == ("walk", 0.5)


def test_encdec_batch_layout_and_target_shift():
    cfg = _data_cfg("", "naming", seq_len=16)
    cfg.task.target_len = 8
    tok = get_tokenizer("byte")
    pairs = [("def _(x): pass", "abc"), ("x" * 40, "a_much_longer_name")]
    b = tasks.encode(cfg, tok, pairs)
    assert set(b) == set(tasks.batch_keys(cfg.task))
    assert b["inputs"].shape == (2, 16) and b["targets"].shape == (2, 8)
    eos = tok.eos_id
    want0 = list(tok.encode("abc")) + [eos]
    np.testing.assert_array_equal(b["targets"][0], want0 + [0] * 4)
    np.testing.assert_array_equal(b["targets_segment_ids"][0], [1] * 4 + [0] * 4)
    np.testing.assert_array_equal(b["targets_positions"][0], [0, 1, 2, 3, 0, 0, 0, 0])
    np.testing.assert_array_equal(b["targets"][1], list(tok.encode("a_much_"))[:7] + [eos])
    assert b["inputs"][1, -1] == eos and b["inputs_segment_ids"][1].all()  # cut to T - 1 + EOS
    n0 = len(tok.encode("def _(x): pass")) + 1
    assert b["inputs"][0, n0 - 1] == eos and b["inputs_segment_ids"][0].sum() == n0
    # What the decoder reads: start id 0, then the name; teacher forcing predicts target t from t-1.
    dec = np.asarray(shift_right(b["targets"], b["targets_segment_ids"]))
    np.testing.assert_array_equal(dec[0], [0] + want0[:3] + [0] * 4)


def test_eval_batches_pad_with_ignored_rows(tmp_path):
    write_package_tree(str(tmp_path), {"a": 8, "b": 6})
    cfg = _data_cfg(str(tmp_path), "packages", seq_len=32)
    cfg.batch_size = 8
    tok = get_tokenizer("byte")
    n = len(tasks.examples(cfg, "validation"))
    batches = tasks.make_eval_batches(cfg, tok, num_batches=100)
    assert len(batches) == -(-n // 8)
    labels = np.concatenate([x["labels"] for x in batches])
    assert (labels >= 0).sum() == n and (labels[n:] == -1).all()
    assert (batches[0]["tokens"][:, 0] == tok.bos_id).all()  # BOS is the pooled [CLS]
    halves = tasks.make_eval_batches(cfg, tok, num_batches=1, process_index=1, process_count=2)
    np.testing.assert_array_equal(halves[0]["tokens"], batches[0]["tokens"][4:])


def test_task_and_objective_must_agree():
    config = classify_config("phase=scratch")
    assert tasks.check(config) == "packages"
    config.model.num_classes = 3
    with pytest.raises(ValueError, match="model.num_classes=3 must equal data.task.num_classes"):
        tasks.check(config)
    config.data.task.name = "naming"
    with pytest.raises(ValueError, match="trains objective='seq2seq'"):
        tasks.check(config)
    config.data.task.name = ""
    with pytest.raises(ValueError, match="set data.task.name='packages'"):
        tasks.check(config)
