"""GPT-2 (`GPT2LMHeadModel`, `GPT2Model`) <-> our decoder family.

GPT-2 is our decoder with biases everywhere, learned positions, LayerNorm eps 1e-5, tanh-GELU and
tied embeddings. Its `Conv1D` weights are stored [in, out], as our `dense` weights are, so the
mapping is reshapes and the split of the fused `c_attn` [D, 3D] into q, k, v.
"""

import numpy as np

from hf.files import (
    Rule,
    export_state,
    import_state,
    inverse_name,
    require,
    strip_prefix,
    tied_equal,
)
from models.sizes import default_model_config

MODEL_TYPE = "gpt2"
FAMILIES = ("decoder",)

# Hugging Face activation names -> ours (models.layers.ACTIVATIONS).
ACTIVATIONS = {
    "gelu_new": "gelu",
    "gelu_pytorch_tanh": "gelu",
    "gelu": "gelu_exact",
    "relu": "relu",
    "silu": "silu",
}
# Buffers older checkpoints store beside the parameters (the causal mask), and the tied head.
IGNORE = (".attn.bias", ".attn.masked_bias", "lm_head.weight")


def config_from_hf(hf: dict, state: dict | None = None):
    """Our decoder model config for a GPT-2 `config.json`."""
    for key, want in [
        ("scale_attn_weights", True),
        ("scale_attn_by_inverse_layer_idx", False),
        ("add_cross_attention", False),
    ]:
        if hf.get(key, want) != want:
            raise ValueError(f"GPT-2 config {key}={hf[key]!r} is not supported (need {want})")
    act = hf.get("activation_function", "gelu_new")
    if act not in ACTIVATIONS:
        raise ValueError(
            f"GPT-2 activation_function={act!r} is not supported; use {list(ACTIVATIONS)}"
        )
    D = hf["n_embd"]
    cfg = default_model_config("tiny")
    cfg.update(
        family="decoder",
        size=f"hf-gpt2-L{hf['n_layer']}xD{D}",
        vocab_size=hf["vocab_size"],
        n_layers=hf["n_layer"],
        d_model=D,
        n_heads=hf["n_head"],
        n_kv_heads=0,
        d_head=0,
        d_ff=hf.get("n_inner") or 4 * D,
        max_len=hf["n_positions"],
        positions="learned",
        activation=ACTIVATIONS[act],
        tie_embeddings=True,
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        # dropout acts only in training (apply with rngs); the same three places as in GPT-2
        embed_dropout=hf.get("embd_pdrop", 0.1),
        attn_dropout=hf.get("attn_pdrop", 0.1),
        resid_dropout=hf.get("resid_pdrop", 0.1),
        norm_type="layernorm",
        norm_position="pre",
        norm_bias=True,
        attn_bias=True,
        mlp_bias=True,
    )
    return cfg


def config_to_hf(cfg) -> dict:
    """A GPT-2 `config.json` for our decoder config (inverse of `config_from_hf`)."""
    need = dict(family="decoder", positions="learned", tie_embeddings=True, norm_type="layernorm")
    need |= dict(norm_position="pre", norm_bias=True, attn_bias=True, mlp_bias=True)
    need |= dict(d_head=0, embed_norm=False, type_vocab_size=0, attn_scale=True)
    need |= dict(tied_output_scale=False)
    require(cfg, "GPT-2 export", **need)
    act = inverse_name(ACTIVATIONS, cfg.activation, "GPT-2")
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": MODEL_TYPE,
        "vocab_size": cfg.vocab_size,
        "n_layer": cfg.n_layers,
        "n_embd": cfg.d_model,
        "n_head": cfg.n_heads,
        "n_inner": cfg.d_ff,
        "n_positions": cfg.max_len,
        "activation_function": act,
        "layer_norm_epsilon": cfg.norm_eps,
        "embd_pdrop": cfg.embed_dropout,
        "attn_pdrop": cfg.attn_dropout,
        "resid_pdrop": cfg.resid_dropout,
        "scale_attn_weights": True,
        "tie_word_embeddings": True,
        "bos_token_id": None,
        "eos_token_id": None,
    }


def rules(cfg) -> list[Rule]:
    """Name and layout mapping between `GPT2Model` tensors and our decoder parameters."""
    L, D, N = cfg.n_layers, cfg.d_model, cfg.n_heads
    H = D // N

    def split_qkv(w):  # [D, 3D] -> q, k, v [D, N, H]
        return tuple(x.reshape(D, N, H) for x in np.split(w, 3, axis=-1))

    def join_qkv(q, k, v):
        return (np.concatenate([x.reshape(D, D) for x in (q, k, v)], axis=-1),)

    def split_qkv_bias(b):  # [3D] -> [N, H] each
        return tuple(x.reshape(N, H) for x in np.split(b, 3))

    def join_qkv_bias(q, k, v):
        return (np.concatenate([x.reshape(D) for x in (q, k, v)]),)

    h = "h.{i}."
    return [
        Rule(["wte.weight"], ["embed"]),
        Rule(["wpe.weight"], ["pos_embed"]),
        Rule(
            [h + "ln_1.weight", h + "ln_1.bias"], ["layers/ln1_scale", "layers/ln1_bias"], layers=L
        ),
        Rule(
            [h + "attn.c_attn.weight"], ["layers/q", "layers/k", "layers/v"], split_qkv, join_qkv, L
        ),
        Rule(
            [h + "attn.c_attn.bias"],
            ["layers/q_bias", "layers/k_bias", "layers/v_bias"],
            split_qkv_bias,
            join_qkv_bias,
            L,
        ),
        Rule(
            [h + "attn.c_proj.weight"],
            ["layers/o"],
            lambda w: (w.reshape(N, H, D),),
            lambda o: (o.reshape(D, D),),
            L,
        ),
        Rule([h + "attn.c_proj.bias"], ["layers/o_bias"], layers=L),
        Rule(
            [h + "ln_2.weight", h + "ln_2.bias"], ["layers/ln2_scale", "layers/ln2_bias"], layers=L
        ),
        Rule(
            [h + "mlp.c_fc.weight", h + "mlp.c_fc.bias"], ["layers/wi", "layers/wi_bias"], layers=L
        ),
        Rule(
            [h + "mlp.c_proj.weight", h + "mlp.c_proj.bias"],
            ["layers/wo", "layers/wo_bias"],
            layers=L,
        ),
        Rule(["ln_f.weight", "ln_f.bias"], ["final_ln_scale", "final_ln_bias"]),
    ]


def params_from_hf(state: dict, cfg) -> dict:
    """Our decoder parameters from a `GPT2LMHeadModel` (or bare `GPT2Model`) state dict.

    Raises:
      ValueError: the checkpoint's output head differs from its token embedding (untied).
    """
    state = strip_prefix(state, "transformer.")
    if not tied_equal(state, "wte.weight", "lm_head.weight"):
        raise ValueError(
            "this GPT-2 checkpoint's lm_head differs from wte; untied GPT-2 is unsupported"
        )
    return import_state(state, rules(cfg), ignore=IGNORE)


def params_to_hf(params: dict, cfg) -> dict:
    """The `GPT2LMHeadModel` state dict (its head tied to `transformer.wte`) of our parameters."""
    return {f"transformer.{k}": v for k, v in export_state(params, rules(cfg)).items()}
