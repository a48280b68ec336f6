"""BERT conversion: our encoder's MLM and NSP logits equal `transformers`' on converted weights."""

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")  # a checkout without them skips, not errors
pytest.importorskip("transformers")

from transformers import BertConfig, BertForMaskedLM, BertForPreTraining  # noqa: E402

from experiments.families import bert_model  # noqa: E402
from hf import convert as hf  # noqa: E402
from models import encoder  # noqa: E402
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

SIZES = {
    "L1xD32": dict(
        num_hidden_layers=1,
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=64,
        vocab_size=90,
        max_position_embeddings=32,
    ),
    "L2xD48": dict(
        num_hidden_layers=2,
        hidden_size=48,
        num_attention_heads=3,
        intermediate_size=80,
        vocab_size=120,
        max_position_embeddings=40,
        type_vocab_size=3,
        layer_norm_eps=1e-7,
    ),
}
CLASSES = {"L1xD32": BertForMaskedLM, "L2xD48": BertForPreTraining}


def _hf_model(size: str):
    torch.manual_seed(0)
    return randomize(CLASSES[size](BertConfig(**SIZES[size])), seed=3)


def _run_both(model, cfg, params):
    """(ours, theirs, mask) on a right-padded batch of four lengths with random token types."""
    rng = np.random.default_rng(1)
    tokens, mask = padded_batch(rng, [20, 13, 6, 1], 20, cfg.vocab_size)
    types = rng.integers(0, cfg.type_vocab_size, tokens.shape) * mask
    with torch.no_grad():
        theirs = model(
            input_ids=torch.from_numpy(tokens),
            attention_mask=torch.from_numpy(mask),
            token_type_ids=torch.from_numpy(types),
        )
    batch = {"tokens": tokens, "segment_ids": mask, "token_type_ids": types}
    batch = {k: v.astype(np.int32) for k, v in batch.items()}
    ours = jax.jit(lambda p, b: encoder.apply(p, b, cfg))(params, batch)
    return ours, theirs, mask


@pytest.mark.parametrize(("size", "fmt"), [("L1xD32", "safetensors"), ("L2xD48", "bin")])
def test_logits_match_transformers(tmp_path, size, fmt):
    model = _hf_model(size)
    cfg, params = hf.load_hf(save(model, str(tmp_path / "hf"), fmt))
    assert_same_tree_as_init(params, cfg)
    assert cfg.family == "encoder" and cfg.nsp_head == (size == "L2xD48")
    ours, theirs, mask = _run_both(model, cfg, params)
    hf_logits = theirs.logits if size == "L1xD32" else theirs.prediction_logits
    err = max_abs_diff(ours["logits"], hf_logits, mask)
    print(f"BERT {size} ({fmt}): max |MLM logits - transformers| = {err:.3g}")
    assert err <= 1e-4
    if cfg.nsp_head:
        nsp_err = max_abs_diff(ours["nsp_logits"], theirs.seq_relationship_logits)
        print(f"BERT {size} ({fmt}): max |NSP logits - transformers| = {nsp_err:.3g}")
        assert nsp_err <= 1e-4


def test_export_import_round_trips_bitwise(tmp_path):
    model = _hf_model("L2xD48")
    src = save(model, str(tmp_path / "hf"), "safetensors")
    cfg, _ = assert_round_trip(src, str(tmp_path / "out"))

    back = BertForPreTraining.from_pretrained(str(tmp_path / "out")).eval()
    ids = torch.from_numpy(np.arange(24).reshape(2, 12) % cfg.vocab_size)
    with torch.no_grad():
        assert torch.equal(back(ids).prediction_logits, model(ids).prediction_logits)


def test_checkpoint_without_mlm_head_is_refused():
    state = {"bert.embeddings.word_embeddings.weight": np.zeros((4, 2), np.float32)}
    config = BertConfig(**SIZES["L1xD32"]).to_dict()
    with pytest.raises(ValueError, match="no masked-LM head"):
        hf.from_hf(config, state)


def test_model_built_here_exports_to_transformers(tmp_path):
    """The other direction: experiments/families.py's BERT (with NSP) initialised here,
    exported, read by transformers, gives the same logits, and re-imports bitwise."""
    cfg = default_model_config("tiny")
    bert_model(cfg)
    cfg = small(cfg, nsp_head=True)
    params = our_random_model(cfg)
    hf.save_hf(str(tmp_path / "out"), cfg, params)
    model = BertForPreTraining.from_pretrained(str(tmp_path / "out")).eval()
    ours, theirs, mask = _run_both(model, cfg, params)
    err = max_abs_diff(ours["logits"], theirs.prediction_logits, mask)
    nsp_err = max_abs_diff(ours["nsp_logits"], theirs.seq_relationship_logits)
    print(f"BERT built here, exported: max |MLM, NSP logits - HF| = {err:.3g}, {nsp_err:.3g}")
    assert err <= 1e-4 and nsp_err <= 1e-4
    assert_reimport_matches(str(tmp_path / "out"), cfg, params)
