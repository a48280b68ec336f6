"""T5 v1.0 / v1.1 conversion: our encdec logits equal `transformers`' on converted weights."""

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")  # a checkout without them skips, not errors
pytest.importorskip("transformers")

from transformers import T5Config, T5ForConditionalGeneration  # noqa: E402

from experiments.families import t5_model  # noqa: E402
from hf import convert as hf  # noqa: E402
from models import encdec  # noqa: E402
from models.sizes import default_model_config  # noqa: E402
from tests.hf_helpers import (  # noqa: E402
    assert_reimport_matches,
    assert_round_trip,
    assert_same_tree_as_init,
    max_abs_diff,
    our_random_model,
    padded_batch,
    randomize,
    save,
    small,
)

V10 = dict(feed_forward_proj="relu")  # tied, output scaled by d_model**-0.5
V11 = dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False)  # + an untied lm_head
SIZES = {
    "v1.0-L1xD32": dict(
        V10, num_layers=1, d_model=32, d_kv=8, num_heads=4, d_ff=64, vocab_size=100
    ),
    # d_kv * heads != d_model; fewer decoder layers; few buckets so the log-spaced ones are used
    "v1.0-L2xD48": dict(
        V10,
        num_layers=2,
        num_decoder_layers=1,
        d_model=48,
        d_kv=16,
        num_heads=4,
        d_ff=96,
        vocab_size=120,
        relative_attention_num_buckets=16,
        relative_attention_max_distance=20,
    ),
    "v1.1-L1xD32": dict(
        V11, num_layers=1, d_model=32, d_kv=8, num_heads=4, d_ff=48, vocab_size=100
    ),
    "v1.1-L2xD64": dict(
        V11,
        num_layers=2,
        d_model=64,
        d_kv=16,
        num_heads=2,
        d_ff=80,
        vocab_size=128,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        layer_norm_epsilon=1e-5,
    ),
}


def _hf_model(size: str) -> T5ForConditionalGeneration:
    torch.manual_seed(0)
    config = T5Config(**SIZES[size], decoder_start_token_id=0)
    model = T5ForConditionalGeneration(config)
    if size.startswith("v1.1"):  # transformers 5 always builds lm_head tied; v1.1 has its own
        model.lm_head.weight = torch.nn.Parameter(torch.randn(config.vocab_size, config.d_model))
    return randomize(model, seed=4)


def _run_both(model, cfg, params):
    """(ours, theirs, decoder mask): right-padded encoder and decoder rows of different lengths."""
    rng = np.random.default_rng(2)
    inputs, in_mask = padded_batch(rng, [24, 15, 7], 24, cfg.vocab_size)
    dec, dec_mask = padded_batch(rng, [16, 4, 11], 16, cfg.vocab_size)
    with torch.no_grad():
        theirs = model(
            input_ids=torch.from_numpy(inputs),
            attention_mask=torch.from_numpy(in_mask),
            decoder_input_ids=torch.from_numpy(dec),
            decoder_attention_mask=torch.from_numpy(dec_mask),
        ).logits
    batch = {
        "inputs": inputs,
        "inputs_segment_ids": in_mask,
        "targets": dec,  # only its segment ids matter: decoder_inputs is given
        "targets_segment_ids": dec_mask,
        "decoder_inputs": dec,
    }
    batch = {k: v.astype(np.int32) for k, v in batch.items()}
    ours = jax.jit(lambda p, b: encdec.apply(p, b, cfg))(params, batch)
    return ours, theirs, dec_mask


@pytest.mark.parametrize(
    ("size", "fmt"),
    [
        ("v1.0-L1xD32", "safetensors"),
        ("v1.0-L2xD48", "bin"),
        ("v1.1-L1xD32", "bin"),
        ("v1.1-L2xD64", "safetensors"),
    ],
)
def test_logits_match_transformers(tmp_path, size, fmt):
    model = _hf_model(size)
    cfg, params = hf.load_hf(save(model, str(tmp_path / "hf"), fmt))
    assert_same_tree_as_init(params, cfg)
    v11 = size.startswith("v1.1")
    assert cfg.tie_embeddings == (not v11) and cfg.tied_output_scale == (not v11)
    assert cfg.activation == ("geglu" if v11 else "relu")
    ours, theirs, mask = _run_both(model, cfg, params)
    err = max_abs_diff(ours, theirs, mask)
    print(f"T5 {size} ({fmt}): max |logits - transformers| = {err:.3g}")
    assert err <= 1e-4


@pytest.mark.parametrize("size", ["v1.0-L2xD48", "v1.1-L2xD64"])
def test_export_import_round_trips_bitwise(tmp_path, size):
    model = _hf_model(size)
    src = save(model, str(tmp_path / "hf"), "safetensors")
    cfg, _ = assert_round_trip(src, str(tmp_path / "out"))

    back = T5ForConditionalGeneration.from_pretrained(str(tmp_path / "out")).eval()
    ids = torch.from_numpy(np.arange(20).reshape(2, 10) % cfg.vocab_size)
    with torch.no_grad():
        want = model(input_ids=ids, decoder_input_ids=ids).logits
        assert torch.equal(back(input_ids=ids, decoder_input_ids=ids).logits, want)


def test_model_built_here_exports_to_transformers(tmp_path):
    """The other direction: experiments/families.py's T5 v1.1 initialised here, exported, read by
    transformers, gives the same logits, and re-imports bitwise. (v1.0's export is checked by
    transformers reading it back in the round-trip test.)"""
    version = "1.1"
    cfg = default_model_config("tiny")
    t5_model(cfg, version)
    cfg = small(cfg, d_head=8, n_heads=4, rel_buckets=8, rel_max_distance=16)
    params = our_random_model(cfg)
    hf.save_hf(str(tmp_path / "out"), cfg, params)
    model = T5ForConditionalGeneration.from_pretrained(str(tmp_path / "out")).eval()
    ours, theirs, mask = _run_both(model, cfg, params)
    err = max_abs_diff(ours, theirs, mask)
    print(f"T5 v{version} built here, exported: max |logits - transformers| = {err:.3g}")
    assert err <= 1e-4
    assert_reimport_matches(str(tmp_path / "out"), cfg, params, ignore=("size", "max_len"))
