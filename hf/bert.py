"""BERT (`BertForMaskedLM`, `BertForPreTraining`, `BertModel`) <-> our encoder family.

BERT is our encoder with post-LN, biases everywhere, learned positions, token-type embeddings, an
embedding LayerNorm (eps 1e-12), exact-erf GELU, and an MLM head (dense, GELU, LayerNorm, tied
projection plus an output bias). torch `nn.Linear` weights are [out, in]: each is transposed.
BertForMaskedLM and BertForPreTraining (with the pooler and next-sentence head) are converted.
"""

from hf.files import (
    Rule,
    export_state,
    import_state,
    inverse_name,
    linear,
    require,
    reshaped,
    strip_prefix,
    tied_equal,
)
from models.sizes import default_model_config

MODEL_TYPE = "bert"
FAMILIES = ("encoder",)
ACTIVATIONS = {
    "gelu": "gelu_exact",
    "gelu_new": "gelu",
    "gelu_pytorch_tanh": "gelu",
    "relu": "relu",
}
# Buffers and tied duplicates some checkpoints store beside the parameters.
IGNORE = ("embeddings.position_ids", "embeddings.token_type_ids", "cls.predictions.decoder.bias")
_DECODER = "cls.predictions.decoder.weight"  # the MLM projection, tied to the word embeddings


def config_from_hf(hf: dict, state: dict):
    """Our encoder model config for a BERT `config.json` (heads as present in `state`)."""
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError("BERT position_embedding_type must be 'absolute'")
    act = hf.get("hidden_act", "gelu")
    if act not in ACTIVATIONS:
        raise ValueError(
            f"BERT hidden_act={act!r} is not supported; use one of {list(ACTIVATIONS)}"
        )
    if hf.get("is_decoder") or hf.get("add_cross_attention"):
        raise ValueError("BERT as a decoder (is_decoder / add_cross_attention) is not supported")
    state = _normalise(state)
    if "cls.predictions.bias" not in state:
        raise ValueError(
            "this BERT checkpoint has no masked-LM head (cls.predictions); convert a "
            "BertForMaskedLM or BertForPreTraining checkpoint"
        )
    if ("pooler.dense.weight" in state) != ("cls.seq_relationship.weight" in state):
        raise ValueError("BERT checkpoints need both or neither of the pooler and the NSP head")
    cfg = default_model_config("tiny")
    cfg.update(
        family="encoder",
        size=f"hf-bert-L{hf['num_hidden_layers']}xD{hf['hidden_size']}",
        vocab_size=hf["vocab_size"],
        n_layers=hf["num_hidden_layers"],
        d_model=hf["hidden_size"],
        n_heads=hf["num_attention_heads"],
        n_kv_heads=0,
        d_head=0,
        d_ff=hf["intermediate_size"],
        max_len=hf["max_position_embeddings"],
        positions="learned",
        type_vocab_size=hf.get("type_vocab_size", 2),
        activation=ACTIVATIONS[act],
        tie_embeddings=True,
        norm_type="layernorm",
        norm_position="post",
        norm_bias=True,
        norm_eps=hf.get("layer_norm_eps", 1e-12),
        # dropout acts only in training (apply with rngs)
        embed_dropout=hf.get("hidden_dropout_prob", 0.1),
        resid_dropout=hf.get("hidden_dropout_prob", 0.1),
        attn_dropout=hf.get("attention_probs_dropout_prob", 0.1),
        embed_norm=True,
        attn_bias=True,
        mlp_bias=True,
        nsp_head="cls.seq_relationship.weight" in state,
    )
    return cfg


def config_to_hf(cfg) -> dict:
    """A BERT `config.json` for our encoder config (inverse of `config_from_hf`)."""
    need = dict(
        family="encoder",
        positions="learned",
        norm_type="layernorm",
        norm_position="post",
        embed_norm=True,
        attn_bias=True,
        mlp_bias=True,
        tie_embeddings=True,
    )
    need |= dict(d_head=0, norm_bias=True, attn_scale=True, tied_output_scale=False, num_classes=0)
    require(cfg, "BERT export", **need)
    act = inverse_name(ACTIVATIONS, cfg.activation, "BERT")
    return {
        "architectures": ["BertForPreTraining" if cfg.nsp_head else "BertForMaskedLM"],
        "model_type": MODEL_TYPE,
        "vocab_size": cfg.vocab_size,
        "num_hidden_layers": cfg.n_layers,
        "hidden_size": cfg.d_model,
        "num_attention_heads": cfg.n_heads,
        "intermediate_size": cfg.d_ff,
        "max_position_embeddings": cfg.max_len,
        "type_vocab_size": cfg.type_vocab_size,
        "hidden_act": act,
        "layer_norm_eps": cfg.norm_eps,
        "hidden_dropout_prob": cfg.resid_dropout,
        "attention_probs_dropout_prob": cfg.attn_dropout,
        "position_embedding_type": "absolute",
        "tie_word_embeddings": True,
        "pad_token_id": 0,
    }


def rules(cfg) -> list[Rule]:
    """Name and layout mapping between BERT tensors (without the `bert.` prefix) and ours."""
    L, D, N, F = cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_ff
    H = D // N
    e, h = "embeddings.", "encoder.layer.{i}."
    rs = [
        Rule([e + "word_embeddings.weight"], ["embed"]),
        Rule([e + "position_embeddings.weight"], ["pos_embed"]),
        Rule([e + "token_type_embeddings.weight"], ["type_embed"]),
        Rule([e + "LayerNorm.weight", e + "LayerNorm.bias"], ["emb_ln_scale", "emb_ln_bias"]),
    ]
    for name, ours in [("query", "q"), ("key", "k"), ("value", "v")]:
        hf = h + f"attention.self.{name}"
        rs.append(linear(hf + ".weight", f"layers/{ours}", (D,), (N, H), layers=L))
        rs.append(reshaped(hf + ".bias", f"layers/{ours}_bias", (D,), (N, H), layers=L))
    a, m = h + "attention.output.", h + "output."
    rs += [
        linear(a + "dense.weight", "layers/o", (N, H), (D,), layers=L),
        Rule([a + "dense.bias"], ["layers/o_bias"], layers=L),
        Rule(
            [a + "LayerNorm.weight", a + "LayerNorm.bias"],
            ["layers/ln1_scale", "layers/ln1_bias"],
            layers=L,
        ),
        linear(h + "intermediate.dense.weight", "layers/wi", (D,), (F,), layers=L),
        Rule([h + "intermediate.dense.bias"], ["layers/wi_bias"], layers=L),
        linear(m + "dense.weight", "layers/wo", (F,), (D,), layers=L),
        Rule([m + "dense.bias"], ["layers/wo_bias"], layers=L),
        Rule(
            [m + "LayerNorm.weight", m + "LayerNorm.bias"],
            ["layers/ln2_scale", "layers/ln2_bias"],
            layers=L,
        ),
        linear("cls.predictions.transform.dense.weight", "mlm_dense", (D,), (D,)),
        Rule(["cls.predictions.transform.dense.bias"], ["mlm_dense_bias"]),
        Rule(
            [
                "cls.predictions.transform.LayerNorm.weight",
                "cls.predictions.transform.LayerNorm.bias",
            ],
            ["mlm_ln_scale", "mlm_ln_bias"],
        ),
        Rule(["cls.predictions.bias"], ["mlm_out_bias"]),
        # The pooler and NSP head (BertForPreTraining; BertForMaskedLM has neither).
        linear("pooler.dense.weight", "pooler", (D,), (D,), optional=True),
        Rule(["pooler.dense.bias"], ["pooler_bias"], optional=True),
        linear("cls.seq_relationship.weight", "nsp", (D,), (2,), optional=True),
        Rule(["cls.seq_relationship.bias"], ["nsp_bias"], optional=True),
    ]
    return rs


def _normalise(state: dict) -> dict:
    return strip_prefix(state, "bert.")


def params_from_hf(state: dict, cfg) -> dict:
    """Our encoder parameters from a BERT state dict.

    Raises:
      ValueError: the MLM projection differs from the word embeddings (untied).
    """
    state = _normalise(state)
    if not tied_equal(state, "embeddings.word_embeddings.weight", _DECODER):
        raise ValueError(f"this BERT checkpoint's {_DECODER} differs from the word embeddings")
    state = {k: v for k, v in state.items() if k != _DECODER}
    return import_state(state, rules(cfg), ignore=IGNORE)


def params_to_hf(params: dict, cfg) -> dict:
    """The BERT state dict of our parameters (body under `bert.`, heads under `cls.`)."""
    state = export_state(params, rules(cfg))
    return {k if k.startswith("cls.") else f"bert.{k}": v for k, v in state.items()}
