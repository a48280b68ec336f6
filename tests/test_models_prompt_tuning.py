"""Prompt tuning: a soft prompt holding real token embeddings == those tokens typed in front."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from adapt import prompt as prompt_tuning
from models import decoder
from models.sizes import default_model_config


def _cfg(**kw):
    cfg = default_model_config("tiny")
    cfg.update(n_layers=2, d_model=32, n_heads=4, d_ff=64)
    cfg.update(kw)
    return cfg


@pytest.mark.parametrize("positions", ["rotary", "learned"])
def test_soft_prompt_of_token_embeddings_equals_the_typed_prefix(positions):
    cfg = _cfg(positions=positions)
    params = nn.unbox(decoder.init(jax.random.key(0), cfg))
    prefix = np.array([17, 99, 5, 250], np.int32)
    tokens = np.random.default_rng(0).integers(4, 384, (2, 10)).astype(np.int32)
    prompt = {"embeds": params["embed"][prefix]}
    got = prompt_tuning.apply(decoder.apply, params, prompt, {"tokens": tokens}, cfg)
    typed = np.concatenate([np.broadcast_to(prefix, (2, 4)), tokens], axis=1)
    want = decoder.apply(params, {"tokens": typed}, cfg)[:, 4:]
    assert got.shape == (2, 10, 384)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_prepend_shifts_only_the_first_document():
    batch = {
        "tokens": np.array([[7, 8, 9, 10, 0]], np.int32),
        "segment_ids": np.array([[1, 1, 2, 2, 0]], np.int32),
        "positions": np.array([[0, 1, 0, 1, 0]], np.int32),
        "loss_mask": np.array([[1, 1, 1, 1, 0]], np.int32),
    }
    out = prompt_tuning.prepend(batch, 2, 500)
    np.testing.assert_array_equal(out["tokens"], [[500, 501, 7, 8, 9, 10, 0]])
    np.testing.assert_array_equal(out["segment_ids"], [[1, 1, 1, 1, 2, 2, 0]])
    np.testing.assert_array_equal(out["positions"], [[0, 1, 2, 3, 0, 1, 0]])
    np.testing.assert_array_equal(out["loss_mask"], [[0, 0, 1, 1, 1, 1, 0]])


def test_init_from_vocabulary_or_random():
    cfg = _cfg()
    params = nn.unbox(decoder.init(jax.random.key(0), cfg))
    pcfg = prompt_tuning.default_prompt_config()
    pcfg.length = 6
    emb = np.asarray(prompt_tuning.init(jax.random.key(1), params, pcfg, 360)["embeds"])
    table = np.asarray(params["embed"])
    for row in emb:  # every row is the embedding of a real (non-special) token id
        matches = np.where((table == row).all(axis=1))[0]
        assert len(matches) == 1 and 4 <= matches[0] < 360
    pcfg.init = "random"
    rnd = np.asarray(prompt_tuning.init(jax.random.key(1), params, pcfg, 360)["embeds"])
    assert rnd.shape == (6, 32) and not (table[:, None] == rnd[None]).all(-1).any()
    pcfg.init = "zeros"
    with pytest.raises(ValueError, match="adapt.prompt.init"):
        prompt_tuning.init(jax.random.key(1), params, pcfg, 360)
