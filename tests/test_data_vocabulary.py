"""Tests for data/vocabulary.py and the `tokenizer=` experiment argument."""

import os

import numpy as np
import pytest

from data import corpus, spm, vocabulary
from data.config import default_data_config
from data.pipeline import make_eval_batches, tokenizer_from_config
from experiments import gpt, scaling
from tests.helpers import make_corpus


@pytest.fixture
def data_cfg(tmp_path):
    cfg = default_data_config()
    cfg.glob = make_corpus(str(tmp_path / "src"), n_files=30)
    cfg.data_dir, cfg.val_fraction = str(tmp_path / "tfds"), 0.2
    cfg.tokenizer, cfg.vocab_size = "bpe", 600
    cfg.seq_len, cfg.batch_size = 64, 4
    return cfg


def test_trains_once_on_the_train_split_and_reuses_the_file(data_cfg, monkeypatch):
    tok = tokenizer_from_config(data_cfg)
    path = vocabulary.model_path(data_cfg)
    assert os.path.exists(path) and path.startswith(data_cfg.data_dir)
    assert tok.vocab_size == 600 and tok.sentinel(7) == tok.mask_id + 8
    train = corpus.load_split(data_cfg, "train")
    val = corpus.load_split(data_cfg, "validation")
    texts = [train[0], *(val[i] for i in range(len(val)))]
    for text in texts:  # Exact round trip and exact byte counts, validation included.
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert tok.bytes_per_token[ids].sum() == len(text.encode("utf-8"))
    assert sum(len(t.encode()) for t in texts) > 1.5 * sum(len(tok.encode(t)) for t in texts)

    def fail(*args, **kwargs):
        raise AssertionError("retrained an existing vocabulary")

    monkeypatch.setattr(spm, "train", fail)
    again = tokenizer_from_config(data_cfg)
    np.testing.assert_array_equal(again.encode(train[0]), tok.encode(train[0]))


def test_settings_name_the_file(data_cfg):
    paths = {vocabulary.model_path(data_cfg)}
    for key, value in (("vocab_size", 700), ("tokenizer", "unigram"), ("num_sentinels", 9)):
        other = default_data_config()
        other.update(data_cfg.to_dict())
        other[key] = value
        paths.add(vocabulary.model_path(other))
    assert len(paths) == 4


def test_pretrained_model_file_and_eval_batches(data_cfg, tmp_path):
    tokenizer_from_config(data_cfg)
    copy = tmp_path / "mine.model"
    copy.write_bytes(open(vocabulary.model_path(data_cfg), "rb").read())
    data_cfg.tokenizer = str(copy)
    tok = tokenizer_from_config(data_cfg)
    batches = make_eval_batches(data_cfg, num_batches=1)
    tokens, segments = batches[0]["tokens"][0], batches[0]["segment_ids"][0]
    assert 0 <= tokens.min() and tokens.max() < tok.vocab_size
    piece = tok.decode(tokens[segments == 1])  # the row's first piece: a stretch of one document
    val = corpus.load_split(data_cfg, "validation")
    assert len(piece) > 20 and any(piece in val[i] for i in range(len(val)))
    data_cfg.tokenizer = str(tmp_path / "missing.model")
    with pytest.raises(ValueError, match="data.tokenizer"):
        tokenizer_from_config(data_cfg)


def test_experiment_argument_sets_data_and_model_vocab(data_cfg):
    config = gpt.get_config("size=tiny,tokenizer=bpe,vocab=4000")
    assert config.data.tokenizer == "bpe" and config.data.vocab_size == 4000
    assert config.model.vocab_size == 4096  # padded to a multiple of 128
    assert gpt.get_config("size=tiny").model.vocab_size == 384  # the byte tokenizer's table
    sweep = scaling.get_config("preset=smoke,tokenizer=unigram,vocab=1000")
    assert (sweep.data.tokenizer, sweep.model.vocab_size) == ("unigram", 1024)
    tokenizer_from_config(data_cfg)
    file_config = gpt.get_config(f"size=tiny,tokenizer={vocabulary.model_path(data_cfg)}")
    assert file_config.data.vocab_size == 600 and file_config.model.vocab_size == 640
    with pytest.raises(ValueError, match="tokenizer='wordpiece' is unknown"):
        gpt.get_config("size=tiny,tokenizer=wordpiece")


def test_tokenizer_pickles_for_worker_processes(data_cfg):
    import pickle

    tok = tokenizer_from_config(data_cfg)
    clone = pickle.loads(pickle.dumps(tok))
    text = "def f(x):\n    return x  # ü\n"
    np.testing.assert_array_equal(clone.encode(text), tok.encode(text))
