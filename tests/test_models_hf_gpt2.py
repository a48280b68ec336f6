"""GPT-2 conversion: our decoder's logits equal `transformers`' on converted random weights."""

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")  # a checkout without them skips, not errors
pytest.importorskip("transformers")

from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from hf import convert as hf  # noqa: E402
from hf import files as hf_io  # noqa: E402
from models import decoder  # noqa: E402
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
    # n_inner=None -> 4 * n_embd; the second size has its own d_ff and exact-erf GELU
    "L1xD32": dict(n_layer=1, n_embd=32, n_head=4, vocab_size=97, n_positions=32),
    "L2xD64": dict(
        n_layer=2,
        n_embd=64,
        n_head=2,
        n_inner=96,
        vocab_size=128,
        n_positions=40,
        activation_function="gelu",
        layer_norm_epsilon=1e-6,
    ),
}


def _hf_model(size: str) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    cfg = GPT2Config(**SIZES[size], bos_token_id=None, eos_token_id=None)
    return randomize(GPT2LMHeadModel(cfg), seed=1)


def _batch(vocab: int):
    """Rows of different lengths, right- and left-padded, with GPT-2's padded position ids."""
    tokens, mask = padded_batch(np.random.default_rng(0), [24, 17, 9, 3], 24, vocab, left=(2,))
    positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    return tokens, mask, positions


@pytest.mark.parametrize(("size", "fmt"), [("L1xD32", "safetensors"), ("L2xD64", "bin")])
def test_logits_match_transformers(tmp_path, size, fmt):
    model = _hf_model(size)
    cfg, params = hf.load_hf(save(model, str(tmp_path / "hf"), fmt))
    assert_same_tree_as_init(params, cfg)
    assert cfg.family == "decoder" and cfg.d_ff == (model.config.n_inner or 4 * cfg.d_model)
    tokens, mask, positions = _batch(cfg.vocab_size)
    with torch.no_grad():
        want = model(
            input_ids=torch.from_numpy(tokens),
            attention_mask=torch.from_numpy(mask),
            position_ids=torch.from_numpy(positions),
        ).logits
    batch = {"tokens": tokens.astype(np.int32), "segment_ids": mask.astype(np.int32)}
    batch["positions"] = positions.astype(np.int32)
    got = jax.jit(lambda p, b: decoder.apply(p, b, cfg))(params, batch)
    err = max_abs_diff(got, want, mask)
    print(f"GPT-2 {size} ({fmt}): max |logits - transformers| = {err:.3g}")
    assert err <= 1e-4


def test_export_import_round_trips_bitwise(tmp_path):
    model = _hf_model("L2xD64")
    src = save(model, str(tmp_path / "hf"), "safetensors")
    cfg, _ = assert_round_trip(src, str(tmp_path / "out"))

    # transformers reads the exported directory as the same model.
    back = GPT2LMHeadModel.from_pretrained(str(tmp_path / "out")).eval()
    ids = torch.from_numpy(np.arange(20).reshape(2, 10) % cfg.vocab_size)
    with torch.no_grad():
        assert torch.equal(back(ids).logits, model(ids).logits)


def test_untied_head_is_refused(tmp_path):
    model = _hf_model("L1xD32")
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    state["lm_head.weight"] = state["lm_head.weight"] + 1.0
    with pytest.raises(ValueError, match="lm_head differs"):
        hf.from_hf(model.config.to_dict(), state)


@pytest.mark.parametrize("fmt", ["sharded", "bin"])
def test_bfloat16_and_sharded_checkpoints_round_trip_bitwise(tmp_path, fmt):
    model = _hf_model("L1xD32").to(torch.bfloat16)
    src = str(tmp_path / "hf")
    if fmt == "sharded":
        model.save_pretrained(src, max_shard_size="20KB")
        assert (tmp_path / "hf" / hf_io.SAFETENSORS_INDEX).exists()
    else:
        save(model, src, fmt)
    tied = ["lm_head.weight"] if fmt == "bin" else []
    _, params = assert_round_trip(src, str(tmp_path / "out"), tied)
    assert params["layers"]["q"].dtype.name == "bfloat16"
    want = (
        model.transformer.h[0].attn.c_attn.weight.detach().float().numpy()[:, :32].reshape(32, 4, 8)
    )
    assert np.array_equal(params["layers"]["q"][0].astype(np.float32), want)


def test_unsupported_configs_are_refused_with_the_field_named():
    config = GPT2Config(**SIZES["L1xD32"], scale_attn_by_inverse_layer_idx=True).to_dict()
    with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx"):
        hf.from_hf(config, {})
    from models.sizes import default_model_config

    rotary = default_model_config("tiny")  # today's default decoder: rotary, no biases
    with pytest.raises(ValueError, match="positions='learned'"):
        hf.to_hf(rotary, {"embed": np.zeros((4, 2), np.float32)})
    # The switches of the model's groups no GPT-2 has, named by their dotted paths.
    rotary.sparse.pattern, rotary.mup.enabled = "local", True
    with pytest.raises(ValueError) as e:
        hf_io.require(rotary, "GPT-2 export")
    assert str(e.value) == (
        "GPT-2 export needs model.sparse.pattern='dense' (got 'local'), "
        "model.mup.enabled=False (got True)"
    )


def test_model_built_here_exports_to_transformers(tmp_path):
    """The other direction: a GPT-2-shaped decoder initialised here, exported, read by
    transformers, gives the same logits, and re-imports bitwise."""
    cfg = small(hf.converter("gpt2").config_from_hf(GPT2Config().to_dict()), d_ff=48)
    params = our_random_model(cfg)
    hf.save_hf(str(tmp_path / "out"), cfg, params)
    model = GPT2LMHeadModel.from_pretrained(str(tmp_path / "out")).eval()
    tokens, mask, positions = _batch(cfg.vocab_size)
    with torch.no_grad():
        want = model(
            input_ids=torch.from_numpy(tokens),
            attention_mask=torch.from_numpy(mask),
            position_ids=torch.from_numpy(positions),
        ).logits
    batch = {"tokens": tokens, "segment_ids": mask, "positions": positions}
    batch = {k: v.astype(np.int32) for k, v in batch.items()}
    got = jax.jit(lambda p, b: decoder.apply(p, b, cfg))(params, batch)
    err = max_abs_diff(got, want, mask)
    print(f"GPT-2 built here, exported: max |logits - transformers| = {err:.3g}")
    assert err <= 1e-4
    assert_reimport_matches(str(tmp_path / "out"), cfg, params)
