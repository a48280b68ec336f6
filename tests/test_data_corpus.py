"""Tests for data/corpus.py: the local text-file builder, splits, errors, catalog pass-through."""

import os
import shutil
import subprocess
import sys

import pytest

from data import cleaning, corpus
from data.config import default_data_config

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_corpus(root, num_files=40, reverse=False):
    """Writes `num_files` text files in nested dirs plus one empty and one invalid-UTF-8 file."""
    names = [f"d{i % 3}/sub{i % 2}/file{i:03d}.txt" for i in range(num_files)]
    for i, name in list(enumerate(names))[::-1] if reverse else enumerate(names):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"document {i} ü\n" + "x" * (i * 7), encoding="utf-8")
    (root / "d0" / "empty.txt").write_bytes(b"")
    (root / "d1" / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    return {name: (root / name).read_text(encoding="utf-8") for name in names}


def make_cfg(tmp_path, glob, **overrides):
    cfg = default_data_config()
    cfg.glob, cfg.data_dir = str(glob), str(tmp_path / "tfds")
    cfg.update(overrides)
    return cfg


def read_split(cfg, split):
    builder = corpus.prepare_builder(cfg)
    source = builder.as_data_source(split=split)
    return {ex["path"].decode(): ex["text"].decode() for ex in source}


def test_builds_all_valid_files_and_counts_skipped(tmp_path, capfd):
    files = write_corpus(tmp_path / "src")
    cfg = make_cfg(tmp_path, tmp_path / "src" / "**" / "*.txt", val_fraction=0.3)
    corpus.prepare_builder(cfg)
    # The build reports on stderr only (TFDS's own progress lines included): stdout is for
    # results, e.g. `launch/plan.py --json` on a machine that has not built the corpus yet.
    built = capfd.readouterr()
    assert built.out == "" and "Building scalelab_text_files" in built.err
    train, val = read_split(cfg, "train"), read_split(cfg, "validation")
    assert not set(train) & set(val)
    assert {**train, **val} == files
    meta = corpus.prepare_builder(cfg).info.metadata
    assert (meta["files"], meta["filter_length_docs"], meta["filter_utf8_docs"]) == (40, 1, 1)
    assert meta["bytes"] == sum(len(t.encode()) for t in files.values())
    texts = corpus.load_split(cfg, "validation")
    assert len(texts) == len(val) and sorted(texts[i] for i in range(len(texts))) == sorted(
        val.values()
    )
    for path in val:
        assert corpus.split_of(path, 0.3) == "validation"


def test_split_depends_only_on_relative_path(tmp_path):
    write_corpus(tmp_path / "a")
    write_corpus(tmp_path / "b", reverse=True)  # Other creation (and directory listing) order.
    cfg_a = make_cfg(tmp_path, tmp_path / "a" / "**" / "*.txt", val_fraction=0.3)
    cfg_b = make_cfg(tmp_path, tmp_path / "b" / "**" / "*.txt", val_fraction=0.3)
    # A narrower glob over the same tree: files it shares must land in the same split.
    cfg_c = make_cfg(tmp_path, tmp_path / "a" / "**" / "file0*.txt", val_fraction=0.3)
    names = {c.glob: corpus.make_builder_config(c.glob, 0.3).name for c in (cfg_a, cfg_b, cfg_c)}
    assert (
        corpus.make_builder_config(cfg_a.glob, 0.3).name
        != corpus.make_builder_config(cfg_a.glob, 0.3, cleaning.Cleaning(deduplicate=False)).name
    )  # Other cleaning settings, other directory.
    assert len(set(names.values())) == 3  # Distinct sources never share a directory.
    for split in corpus.SPLITS:
        in_a, in_b, in_c = (set(read_split(c, split)) for c in (cfg_a, cfg_b, cfg_c))
        assert in_a == in_b and in_c <= in_a and in_c


def test_split_of_is_a_stable_hash_of_the_path():
    """An independent statement of the rule (the first 8 bytes of sha256(path) as a fraction of
    2^64, below val_fraction: validation), which no per-process salt could pass."""
    import hashlib

    names = [f"d{i % 7}/sub{i % 3}/file{i:03d}.txt" for i in range(2000)]
    for name in names:
        u = int(hashlib.sha256(name.encode()).hexdigest()[:16], 16) / 16**16
        for fraction in (0.05, 0.3):
            expected = "validation" if u < fraction else "train"
            assert corpus.split_of(name, fraction) == expected, (name, fraction)
    val = [n for n in names if corpus.split_of(n, 0.3) == "validation"]
    assert abs(len(val) / len(names) - 0.3) < 0.04  # 1 sigma: 0.01
    # A larger fraction only adds files to validation (the same u, a higher threshold).
    assert {n for n in names if corpus.split_of(n, 0.05) == "validation"} < set(val)


def test_second_load_reuses_the_build(tmp_path, monkeypatch):
    write_corpus(tmp_path / "src", num_files=10)
    cfg = make_cfg(tmp_path, tmp_path / "src" / "**" / "*.txt", val_fraction=0.2)
    first = len(corpus.load_split(cfg, "train"))

    def fail(*args, **kwargs):
        raise AssertionError("rebuilt an existing dataset")

    monkeypatch.setattr(corpus.ScalelabTextFiles, "download_and_prepare", fail)
    assert len(corpus.load_split(cfg, "train")) == first


def test_concurrent_builds_are_safe(tmp_path):
    write_corpus(tmp_path / "src", num_files=60)
    script = (
        "import sys; from data import corpus; from data.config import default_data_config\n"
        "cfg = default_data_config(); cfg.glob, cfg.data_dir = sys.argv[1], sys.argv[2]\n"
        "print(len(corpus.load_split(cfg, 'train')))\n"
    )
    args = [str(tmp_path / "src" / "**" / "*.txt"), str(tmp_path / "tfds")]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, *args],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs, errs = zip(*(p.communicate(timeout=120) for p in procs), strict=True)
    assert [p.returncode for p in procs] == [0, 0]
    counts = [out.strip().splitlines()[-1] for out in outs]
    assert counts[0] == counts[1] and int(counts[0]) > 0
    # TFDS announces a build (sent to stderr, stdout stays for results): exactly one process
    # built, the other waited and reused it.
    assert sum("Downloading and preparing" in err for err in errs) == 1


def test_errors_name_the_config_field(tmp_path):
    with pytest.raises(ValueError, match=r"data\.glob=.*matches no files"):
        corpus.load_split(make_cfg(tmp_path, tmp_path / "nothing" / "*.txt"), "train")
    write_corpus(tmp_path / "src", num_files=5)
    cfg = make_cfg(tmp_path, tmp_path / "src" / "**" / "*.txt", val_fraction=0.0)
    with pytest.raises(ValueError, match=r"'validation'.*empty.*data\.val_fraction"):
        corpus.load_split(cfg, "validation")
    with pytest.raises(ValueError, match=r"data\.val_fraction"):
        corpus.make_builder_config("", 1.5)


def test_default_data_dir(monkeypatch):
    monkeypatch.setenv("SCALELAB_DATA_DIR", "/some/where")
    assert corpus.default_data_dir() == "/some/where"
    monkeypatch.delenv("SCALELAB_DATA_DIR")
    assert corpus.default_data_dir() == os.path.expanduser("~/.cache/scalelab/tfds")


def test_catalog_names_pass_through_to_tfds(tmp_path, monkeypatch):
    calls = []

    def fake_data_source(name, *, split, data_dir):
        calls.append((name, split, data_dir))
        return [{"sentence": "héllo".encode()}, {"sentence": b"world"}]

    monkeypatch.setattr(corpus.tfds, "data_source", fake_data_source)
    cfg = default_data_config()
    cfg.dataset, cfg.text_key, cfg.data_dir = "lm1b", "sentence", "gs://bucket/tfds"
    texts = corpus.load_split(cfg, "validation")
    assert calls == [("lm1b", "validation", "gs://bucket/tfds")]
    assert [texts[i] for i in range(len(texts))] == ["héllo", "world"]


def test_stdlib_corpus(tmp_path):
    """Builds the real default corpus (~3 s) and checks its size and split determinism."""
    cfg = default_data_config()
    cfg.data_dir = str(tmp_path / "tfds")
    builder = corpus.prepare_builder(cfg)
    meta = builder.info.metadata
    assert meta["files"] > 1000 and meta["bytes"] > 20e6
    assert builder.builder_config.name.startswith("stdlib-py")
    val = {ex["path"].decode() for ex in builder.as_data_source(split="validation")}
    train_source = builder.as_data_source(split="train")
    assert len(val) + len(train_source) == meta["files"]
    assert 0.03 < len(val) / meta["files"] < 0.07
    assert all(corpus.split_of(p, 0.05) == "validation" for p in val)
    assert not any("site-packages" in p for p in val)
    stdlib = os.path.dirname(os.__file__)
    expected_val = {
        rel
        for rel, _ in corpus.list_files(builder.builder_config)
        if corpus.split_of(rel, 0.05) == "validation"
    }
    assert val <= expected_val and os.path.isfile(os.path.join(stdlib, sorted(val)[0]))
    shutil.rmtree(tmp_path / "tfds")
