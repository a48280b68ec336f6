"""Tests for data/pipeline.py: packing, epochs, per-process sharding, checkpointing, eval batches.

Documents are reconstructed from the batches (row, segment id) and compared, as multisets of
pieces, with documents tokenized independently here.
"""

import collections

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from data import corpus, pipeline
from data.config import default_data_config

T, B = 32, 4
BOS, EOS, OFFSET = 1, 2, 104  # ByteTokenizer(num_sentinels=100) layout, written out independently.


def doc_texts(n=30):
    """Random texts (so every piece is distinct) whose lengths straddle piece boundaries."""
    rng = np.random.default_rng(0)
    alphabet = np.array(list("abcdefghijklmnopqrstuvwxyz é\n"))
    lengths = [T - 2, T - 1, T, 1, 0, 2 * T - 2, 3 * T + 5, 100] + list(range(3, 3 + 7 * n, 7))
    return ["".join(rng.choice(alphabet, size=k)) for k in lengths[:n]]


def expected_pieces(texts):
    pieces = collections.Counter()
    for text in texts:
        doc = [BOS] + [b + OFFSET for b in text.encode("utf-8")] + [EOS]
        pieces.update(tuple(doc[i : i + T]) for i in range(0, len(doc), T))
    return pieces


def pieces_in(batches):
    """Returns the pieces of `batches` in order, checking each row's segment/position layout."""
    pieces = []
    for batch in batches:
        assert set(batch) == {"tokens", "segment_ids", "positions"}
        for v in batch.values():
            assert v.dtype == np.int32 and v.shape == batch["tokens"].shape
        for tokens, seg, pos in zip(*(batch[k] for k in pipeline.BATCH_KEYS), strict=True):
            used = seg > 0
            assert not used[np.argmin(used) :].any() or used.all()  # Padding only at the end.
            assert not tokens[~used].any() and not pos[~used].any()
            for s in range(1, seg.max() + 1):
                (where,) = np.nonzero(seg == s)
                assert where.size and np.array_equal(where, np.arange(where[0], where[-1] + 1))
                np.testing.assert_array_equal(pos[where], np.arange(where.size))
                pieces.append(tuple(tokens[where].tolist()))
    return pieces


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    for i, text in enumerate(doc_texts()):
        (root / f"doc{i:02d}.txt").write_text(text, encoding="utf-8")
    cfg = default_data_config()
    cfg.glob, cfg.data_dir = str(root / "*.txt"), str(root / "tfds")
    cfg.seq_len, cfg.batch_size, cfg.val_fraction = T, B, 0.25
    return cfg


def split_texts(cfg, split):
    texts = corpus.load_split(cfg, split)
    return [texts[i] for i in range(len(texts))]


def take(it, n):
    return [next(it) for _ in range(n)]


def test_one_epoch_has_every_piece_once(cfg):
    batches = list(pipeline.make_train_dataset(cfg, seed=3, num_epochs=1))
    assert all(b["tokens"].shape == (B, T) for b in batches)
    train = split_texts(cfg, "train")
    assert collections.Counter(pieces_in(batches)) == expected_pieces(train)
    num_tokens = sum(len(t.encode("utf-8")) + 2 for t in train)
    assert sum(int((b["segment_ids"] > 0).sum()) for b in batches) == num_tokens


def test_epochs_are_reshuffled(cfg):
    expected = expected_pieces(split_texts(cfg, "train"))
    pieces = pieces_in(pipeline.make_train_dataset(cfg, seed=3, num_epochs=2))
    assert collections.Counter(pieces) == {p: 2 * n for p, n in expected.items()}
    n = sum(expected.values())
    assert pieces[: n // 2] != pieces[n : n + n // 2]


def test_seeds(cfg):
    def first(seed):
        return np.stack(
            [b["tokens"] for b in take(pipeline.make_train_iterator(cfg, seed=seed), 5)]
        )

    np.testing.assert_array_equal(first(7), first(7))
    assert not np.array_equal(first(7), first(8))


def test_processes_split_the_data(cfg):
    expected = expected_pieces(split_texts(cfg, "train"))
    per_process = []
    for i in range(2):
        ds = pipeline.make_train_dataset(
            cfg, seed=3, num_epochs=1, process_index=i, process_count=2
        )
        batches = list(ds)
        assert all(b["tokens"].shape == (B // 2, T) for b in batches)
        per_process.append(collections.Counter(pieces_in(batches)))
    # Equal multisets: nothing is lost and nothing is served twice (a few short tail pieces such
    # as (EOS,) occur in several documents, so disjointness is checked on the unique ones).
    assert per_process[0] + per_process[1] == expected
    unique = {p for p, n in expected.items() if n == 1}
    assert not set(per_process[0]) & set(per_process[1]) & unique
    assert per_process[0] and per_process[1]
    with pytest.raises(ValueError, match=r"data\.batch_size=4 .* multiple of 3"):
        pipeline.make_train_iterator(cfg, seed=0, process_count=3)


def checkpoint_roundtrip(make_iterator, path, n=3, k=4):
    """Saves after `n` batches, restores into a fresh iterator, returns (restored, expected) k."""
    uninterrupted = make_iterator()
    expected = take(uninterrupted, n + k)[n:]
    it = make_iterator()
    take(it, n)
    with ocp.CheckpointManager(path) as manager:
        manager.save(n, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
        manager.wait_until_finished()
    take(it, 2)  # Moving on must not affect the saved state.
    fresh = make_iterator()
    with ocp.CheckpointManager(path) as manager:
        manager.restore(n, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
    return take(fresh, k), expected


def assert_batches_equal(got, expected):
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        for key in e:
            np.testing.assert_array_equal(g[key], e[key])


def test_checkpoint_restore_continues_exactly(cfg, tmp_path):
    # 9 batches: past the end of the first epoch, so the epoch counter is restored too.
    got, expected = checkpoint_roundtrip(
        lambda: pipeline.make_train_iterator(cfg, seed=5), tmp_path / "ckpt", n=9
    )
    assert_batches_equal(got, expected)


def test_eval_batches(cfg):
    val = split_texts(cfg, "validation")
    batches = pipeline.make_eval_batches(cfg, num_batches=100)
    assert len(batches) < 100 and all(b["tokens"].shape == (B, T) for b in batches)
    assert collections.Counter(pieces_in(batches)) == expected_pieces(val)
    assert_batches_equal(pipeline.make_eval_batches(cfg, num_batches=100), batches)
    assert_batches_equal(pipeline.make_eval_batches(cfg, num_batches=1), batches[:1])
    # Each process gets its block of rows of the same global batches, and as many of them.
    halves = [
        pipeline.make_eval_batches(cfg, num_batches=100, process_index=i, process_count=2)
        for i in range(2)
    ]
    assert len(halves[0]) == len(halves[1]) == len(batches)
    for h0, h1, full in zip(*halves, batches, strict=True):
        np.testing.assert_array_equal(np.concatenate([h0["tokens"], h1["tokens"]]), full["tokens"])


def test_eval_smaller_than_one_batch_is_padded(tmp_path):
    (tmp_path / "a.txt").write_text("tiny", encoding="utf-8")
    cfg = default_data_config()
    cfg.glob, cfg.data_dir, cfg.val_fraction = str(tmp_path / "a.txt"), str(tmp_path / "tfds"), 0.9
    cfg.seq_len, cfg.batch_size = T, B
    assert corpus.split_of("a.txt", 0.9) == "validation"
    (batch,) = pipeline.make_eval_batches(cfg, num_batches=3)
    assert batch["tokens"].shape == (B, T)
    assert batch["segment_ids"][0, :6].tolist() == [1] * 6 and not batch["segment_ids"][1:].any()
    assert tuple(batch["tokens"][0, :6]) == (BOS, *(b + OFFSET for b in b"tiny"), EOS)
    with pytest.raises(ValueError, match=r"'train'.*empty"):
        pipeline.make_train_iterator(cfg, seed=0)


def test_unknown_tokenizer(cfg):
    bad = cfg.copy_and_resolve_references()
    bad.tokenizer = "nope"
    with pytest.raises(ValueError, match=r"data\.tokenizer"):
        pipeline.make_train_iterator(bad, seed=0)


@pytest.fixture
def catalog_cfg(cfg, monkeypatch):
    """A 'catalog' dataset served from memory, to exercise the streamed (unindexed) path."""
    splits = {"train": split_texts(cfg, "train"), "validation": split_texts(cfg, "validation")}
    monkeypatch.setattr(corpus, "load_split", lambda data_cfg, split: splits[split])
    catalog = cfg.copy_and_resolve_references()
    catalog.glob, catalog.dataset = "", "fake_catalog"
    return catalog, splits


def test_catalog_path_packs_every_piece(catalog_cfg):
    catalog, splits = catalog_cfg
    assert not corpus.is_local(catalog)
    batches = list(pipeline.make_train_dataset(catalog, seed=1, num_epochs=1))
    assert collections.Counter(pieces_in(batches)) == expected_pieces(splits["train"])
    shards = [
        pieces_in(
            pipeline.make_train_dataset(
                catalog, seed=1, num_epochs=1, process_index=i, process_count=2
            )
        )
        for i in range(2)
    ]
    assert collections.Counter(shards[0] + shards[1]) == expected_pieces(splits["train"])
    evals = pipeline.make_eval_batches(catalog, num_batches=100)
    assert collections.Counter(pieces_in(evals)) == expected_pieces(splits["validation"])


def test_catalog_path_checkpoint(catalog_cfg, tmp_path):
    catalog, _ = catalog_cfg
    for n in (1, 2, 5):  # Different points inside long documents.
        got, expected = checkpoint_roundtrip(
            lambda: pipeline.make_train_iterator(catalog, seed=2), tmp_path / f"ckpt{n}", n=n
        )
        assert_batches_equal(got, expected)
