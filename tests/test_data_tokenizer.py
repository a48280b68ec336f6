"""Tests for data/tokenizer.py: id layout, round trips, bytes per token, factory errors."""

import numpy as np
import pytest

from data.tokenizer import ByteTokenizer, get_tokenizer

TEXTS = ["", "hello, world\n", "naïve café — 日本語 🐍", "\x00\x7f tabs\tand\r\nnewlines"]


def test_id_layout():
    tok = ByteTokenizer(num_sentinels=100)
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.mask_id) == (0, 1, 2, 3)
    assert tok.sentinel(0) == 4 and tok.sentinel(99) == 103
    assert tok.vocab_size == 4 + 100 + 256
    np.testing.assert_array_equal(tok.encode(b"\x00\xff"), [104, 104 + 255])
    with pytest.raises(ValueError):
        tok.sentinel(100)


def test_no_sentinels():
    tok = ByteTokenizer(num_sentinels=0)
    assert tok.vocab_size == 260
    np.testing.assert_array_equal(tok.encode("A"), [4 + 65])


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert ids.dtype == np.int32 and ids.ndim == 1
    assert len(ids) == len(text.encode("utf-8"))  # No BOS/EOS added.
    assert tok.decode(ids) == text
    np.testing.assert_array_equal(tok.encode(text.encode("utf-8")), ids)


@pytest.mark.parametrize("text", TEXTS)
def test_bytes_per_token_counts_utf8_bytes(text):
    tok = ByteTokenizer()
    bpt_V = tok.bytes_per_token
    assert bpt_V.shape == (tok.vocab_size,) and bpt_V.dtype == np.int32
    ids = np.concatenate([[tok.bos_id], tok.encode(text), [tok.eos_id, tok.pad_id]])
    assert bpt_V[ids].sum() == len(text.encode("utf-8"))


def test_specials_have_zero_bytes():
    tok = ByteTokenizer(num_sentinels=7)
    specials = [tok.pad_id, tok.bos_id, tok.eos_id, tok.mask_id] + [
        tok.sentinel(i) for i in range(7)
    ]
    assert tok.bytes_per_token[specials].sum() == 0
    assert tok.bytes_per_token.sum() == 256


def test_decode_drops_specials_and_replaces_bad_utf8():
    tok = ByteTokenizer()
    ids = np.concatenate([[tok.bos_id], tok.encode("ab"), [tok.sentinel(3), tok.mask_id]])
    ids = np.concatenate([ids, tok.encode("c"), [tok.eos_id, tok.pad_id, tok.vocab_size + 5]])
    assert tok.decode(ids) == "abc"
    assert tok.decode(tok.encode(b"x\xffy")) == "x\ufffdy"


def test_factory():
    tok = get_tokenizer("byte", num_sentinels=10)
    assert isinstance(tok, ByteTokenizer) and tok.vocab_size == 270
    with pytest.raises(ValueError, match=r"data\.tokenizer='sentencepiece'.*\['byte'\]"):
        get_tokenizer("sentencepiece")
