"""Tests for data/spm.py: id layout, lossless round trips, bytes per token, training, errors."""

import io
import os
import random

import numpy as np
import pytest
import sentencepiece as sp_lib

from data import spm
from data.pieces import tokenize_document

NUM_SENTINELS = 8
VOCAB = 512

TRICKY = [
    "",
    " ",
    "\n",
    "  leading and trailing  ",
    "\n\n\nblank lines\n\n\n",
    "a\r\nb\r\n\r\n",
    "\tdef f():\n\t\treturn 1\n",
    "x    =  1\t# runs of spaces      \n",
    "日本語のテキストと中文",
    "emoji 🐍🎉👩\u200d💻",
    "▁ a literal U+2581 ▁▁ and ▁x",
    "\x00\x01\x7f\x1b[0m",
    "ﬁ ligature, Ａ full width, e\u0301 combining",
    "\u3000ideographic space\u00a0nbsp\u2028line separator",
    "<mask> <extra_id_0> <s> </s> <pad> <unk>",
    "⁇ ▅ unk surfaces",
]


def _code_corpus(num_docs: int = 120, seed: int = 0) -> list[str]:
    """Python-like documents with random identifiers (about 90 KB)."""
    rng = random.Random(seed)
    syllables = ["ba", "co", "de", "fi", "gu", "ka", "lo", "mi", "no", "pe", "ra", "su", "ti", "vo"]

    def name() -> str:
        words = ("".join(rng.choices(syllables, k=rng.randint(1, 3))) for _ in range(2))
        return "_".join(list(words)[: rng.randint(1, 2)])

    docs = []
    for _ in range(num_docs):
        lines = [f"import {name()}", "", ""]
        for _ in range(rng.randint(1, 4)):
            lines.append(f"def {name()}(self, {name()}={rng.randint(0, 999)}):")
            lines.append(f'    """Returns the {name()} of {name()}."""')
            for _ in range(rng.randint(1, 5)):
                lines.append(f"    {name()} = self.{name()}({name()}, {rng.randint(0, 99)})")
            lines.append(f"    if {name()} is None:\n        return {name()}")
            lines.append(f"    return [{name()} for {name()} in {name()}]\n")
        docs.append("\n".join(lines))
    return docs


def _random_unicode(n: int, seed: int) -> str:
    """`n` random code points from every plane (no surrogates), never seen in training."""
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        c = rng.choice([rng.randint(0, 0x7F), rng.randint(0x80, 0xFFFF), rng.randint(0, 0x10FFFF)])
        if not 0xD800 <= c <= 0xDFFF:
            out.append(chr(c))
    return "".join(out)


CORPUS = _code_corpus()
TRICKY += [_random_unicode(200, seed) for seed in range(3)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("spm")
    for kind in spm.KINDS:
        spm.train(
            CORPUS,
            str(path / f"{kind}.model"),
            kind=kind,
            vocab_size=VOCAB,
            num_sentinels=NUM_SENTINELS,
        )
    return path


@pytest.fixture(scope="module", params=spm.KINDS)
def tok(request, model_dir):
    return spm.SentencePieceTokenizer(str(model_dir / f"{request.param}.model"), NUM_SENTINELS)


def test_id_layout(tok):
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.mask_id) == (0, 1, 2, 4)
    assert [tok.sentinel(i) for i in range(NUM_SENTINELS)] == list(range(5, 5 + NUM_SENTINELS))
    assert tok.vocab_size == VOCAB
    first_byte = 5 + NUM_SENTINELS
    np.testing.assert_array_equal(tok.encode("\x00"), [first_byte])
    np.testing.assert_array_equal(
        tok.encode("\U0010ffff"), [first_byte + b for b in b"\xf4\x8f\xbf\xbf"]
    )
    # Learned pieces follow the bytes and encode the training text compactly.
    assert tok.encode(CORPUS[0]).min() >= first_byte
    assert len(tok.encode(CORPUS[0])) < len(CORPUS[0].encode()) / 2


def test_sentinel_range(tok):
    for i in (-1, NUM_SENTINELS):
        with pytest.raises(ValueError, match="out of range"):
            tok.sentinel(i)


@pytest.mark.parametrize("text", TRICKY)
def test_round_trip(tok, text):
    ids = tok.encode(text)
    assert ids.dtype == np.int32 and ids.ndim == 1
    assert tok.decode(ids) == text
    np.testing.assert_array_equal(tok.encode(text.encode("utf-8")), ids)


def test_round_trip_code(tok):
    for text in CORPUS[:20] + ["\r\n".join(CORPUS[0].split("\n"))]:
        assert tok.decode(tok.encode(text)) == text


@pytest.mark.parametrize("text", TRICKY + CORPUS[:3])
def test_bytes_per_token_counts_utf8_bytes(tok, text):
    bpt_V = tok.bytes_per_token
    assert bpt_V.shape == (tok.vocab_size,) and bpt_V.dtype == np.int32
    ids = np.concatenate([[tok.bos_id], tok.encode(text), [tok.eos_id, tok.pad_id]])
    assert bpt_V[ids].sum() == len(text.encode("utf-8"))


def test_bytes_per_token_of_pieces(tok):
    bpt_V = tok.bytes_per_token
    specials = [0, 1, 2, 3, 4] + [tok.sentinel(i) for i in range(NUM_SENTINELS)]
    assert bpt_V[specials].sum() == 0
    first_byte = 5 + NUM_SENTINELS
    assert (bpt_V[first_byte : first_byte + 256] == 1).all()
    assert (bpt_V[first_byte + 256 :] >= 1).all()


def test_specials_never_encoded_and_dropped_by_decode(tok):
    specials = {0, 1, 2, 3, 4} | {tok.sentinel(i) for i in range(NUM_SENTINELS)}
    for text in TRICKY + CORPUS[:5]:
        assert not specials & set(tok.encode(text).tolist())
    ids = np.concatenate([[tok.bos_id, tok.mask_id], tok.encode("ab"), [tok.sentinel(3), 3]])
    ids = np.concatenate([ids, tok.encode(" c"), [tok.eos_id, tok.pad_id, -1, tok.vocab_size]])
    assert tok.decode(ids) == "ab c"
    assert tok.decode(list(ids)) == "ab c"
    assert tok.decode([]) == ""


def test_pipeline_document(tok):
    ids = tokenize_document(CORPUS[1], tok)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert tok.decode(ids) == CORPUS[1]


def test_bytes_input_replaces_bad_utf8(tok):
    assert tok.decode(tok.encode(b"x\xffy")) == "x\ufffdy"


@pytest.mark.parametrize("kind", spm.KINDS)
def test_deterministic(tmp_path, model_dir, kind):
    path = str(tmp_path / "again.model")
    spm.train(CORPUS, path, kind=kind, vocab_size=VOCAB, num_sentinels=NUM_SENTINELS)
    with open(path, "rb") as f, open(model_dir / f"{kind}.model", "rb") as f_first:
        assert f.read() == f_first.read()
    tok = spm.SentencePieceTokenizer(path, NUM_SENTINELS)
    tok_first = spm.SentencePieceTokenizer(str(model_dir / f"{kind}.model"), NUM_SENTINELS)
    for text in CORPUS[:5]:
        np.testing.assert_array_equal(tok.encode(text), tok_first.encode(text))


def test_subsampled_training_is_seeded(tmp_path):
    kw = dict(kind="bpe", vocab_size=VOCAB, num_sentinels=0, max_sentence_bytes=256)
    paths = [str(tmp_path / f"{seed}.model") for seed in (0, 0, 1)]
    for path, seed in zip(paths, (0, 0, 1), strict=True):
        spm.train(CORPUS, path, input_sentence_size=200, seed=seed, **kw)
    a, b, c = (open(p, "rb").read() for p in paths)
    assert a == b and a != c


def test_sentences_are_cut_at_lines_within_the_limit():
    docs = ["a" * 50 + "\n" + "é" * 30 + "\nshort\n", "no newline"]
    sentences = list(spm._sentences(docs, max_bytes=32))
    assert "".join(sentences) == "".join(docs)
    assert all(0 < len(s.encode()) <= 32 for s in sentences)
    assert "no newline" in sentences  # Never joined across documents.


def test_fewer_sentinels_than_trained(model_dir):
    tok = spm.SentencePieceTokenizer(str(model_dir / "bpe.model"), num_sentinels=2)
    assert tok.vocab_size == VOCAB and tok.sentinel(1) == 6
    # The unused sentinels stay control symbols: dropped, never produced.
    assert tok.decode([7, *tok.encode("x")]) == "x"


def test_atomic_write(tmp_path, monkeypatch):
    path = tmp_path / "m.model"
    # A vocabulary the corpus cannot fill fails inside the trainer: nothing is written.
    with pytest.raises(ValueError, match=r"data\.vocab_size=20000 does not fit.*<= "):
        spm.train(CORPUS[:2], str(path), vocab_size=20000, num_sentinels=NUM_SENTINELS)
    assert os.listdir(tmp_path) == []

    # A crash after part of the model is written leaves an existing model untouched.
    path.write_bytes(b"previous model")

    def crash(**kwargs):
        kwargs["model_writer"].write(b"half a model")
        raise RuntimeError("killed")

    monkeypatch.setattr(sp_lib.SentencePieceTrainer, "train", crash)
    with pytest.raises(RuntimeError, match="killed"):
        spm.train(CORPUS, str(path), vocab_size=VOCAB, num_sentinels=NUM_SENTINELS)
    assert os.listdir(tmp_path) == ["m.model"] and path.read_bytes() == b"previous model"


def test_errors(tmp_path, model_dir):
    path = str(tmp_path / "m.model")
    with pytest.raises(ValueError, match=r"data\.tokenizer='wordpiece'.*\['bpe', 'unigram'\]"):
        spm.train(CORPUS, path, kind="wordpiece")
    with pytest.raises(ValueError, match=r"data\.vocab_size=300 .* data\.vocab_size >= 362"):
        spm.train(CORPUS, path, vocab_size=300, num_sentinels=100)
    with pytest.raises(ValueError, match=r"data\.num_sentinels"):
        spm.train(CORPUS, path, num_sentinels=-1)
    with pytest.raises(ValueError, match=r"data\.tokenizer=.*m\.model' does not exist"):
        spm.SentencePieceTokenizer(path)
    with pytest.raises(ValueError, match=r"no control symbol '<extra_id_8>'.*num_sentinels <= 8"):
        spm.SentencePieceTokenizer(str(model_dir / "bpe.model"), num_sentinels=9)
    with open(path, "wb") as f:
        f.write(b"not a model")
    with pytest.raises(ValueError, match=r"not a SentencePiece model"):
        spm.SentencePieceTokenizer(path)
    assert os.listdir(tmp_path) == ["m.model"]  # Failed trainings left nothing behind.


def _foreign_model(path: str, **options) -> str:
    """A plain SentencePiece model (as pretrained ones are), with `options` overriding defaults."""
    proto = io.BytesIO()
    sp_lib.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS),
        model_writer=proto,
        **{"model_type": "bpe", "vocab_size": 400, "minloglevel": 2, **options},
    )
    with open(path, "wb") as f:
        f.write(proto.getvalue())
    return path


def test_foreign_models(tmp_path):
    lossless = dict(
        normalization_rule_name="identity",
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        byte_fallback=True,
    )
    # Default settings: NFKC, dummy prefix, whitespace removal, no byte fallback.
    lossy = _foreign_model(str(tmp_path / "lossy.model"))
    with pytest.raises(ValueError, match=r"lossy \(normalization_rule_name='nmt_nfkc'.*byte_fall"):
        spm.SentencePieceTokenizer(lossy)
    no_pad = _foreign_model(str(tmp_path / "no_pad.model"), **lossless)
    with pytest.raises(ValueError, match=r"no pad control symbol \(pad_id=-1\)"):
        spm.SentencePieceTokenizer(no_pad)
    no_mask = _foreign_model(str(tmp_path / "no_mask.model"), pad_id=3, unk_id=0, **lossless)
    with pytest.raises(ValueError, match=r"no control symbol '<mask>'"):
        spm.SentencePieceTokenizer(no_mask)
    # Specials are found by name, wherever they are.
    ok = _foreign_model(
        str(tmp_path / "ok.model"),
        pad_id=3,
        unk_id=0,
        control_symbols=["<extra_id_1>", "<extra_id_0>", "<mask>"],
        **lossless,
    )
    tok = spm.SentencePieceTokenizer(ok, num_sentinels=2)
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.mask_id) == (3, 1, 2, 6)
    assert (tok.sentinel(0), tok.sentinel(1)) == (5, 4)
    for text in TRICKY:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert tok.bytes_per_token[ids].sum() == len(text.encode())
