"""T5 v1.0 and v1.1 (`T5ForConditionalGeneration`) <-> our encoder-decoder family.

T5 is our encdec with RMSNorm (eps 1e-6, no bias), pre-LN, no biases, no 1/sqrt(H) attention
scaling, a head size `d_kv` independent of d_model, and one relative-position bias table per stack
(held by the first block in Hugging Face, shared by all layers). v1.0: ReLU MLP, output tied to the
shared embedding and scaled by d_model**-0.5. v1.1: gated GELU (`wi_0` activated, `wi_1` linear),
a separate `lm_head`, no scaling. torch `nn.Linear` weights are [out, in]: each is transposed.
"""

from hf.files import Rule, export_state, import_state, inverse_name, linear, require, tied_equal
from models.sizes import default_model_config

MODEL_TYPE = "t5"
FAMILIES = ("encdec",)
# feed_forward_proj -> our activation (transformers maps 'gated-gelu' to the tanh GELU).
ACTIVATIONS = {
    "relu": "relu",
    "gelu": "gelu_exact",
    "gated-gelu": "geglu",
    "gated-relu": "reglu",
    "gated-silu": "swiglu",
}
_COPIES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")  # tied to `shared`


def _untied(state: dict) -> bool:
    return not tied_equal(state, "shared.weight", "lm_head.weight")


def _scaled(hf: dict) -> bool:
    # transformers >= 5 saves `scale_decoder_outputs`; older configs (and the original v1.1 ones)
    # say `tie_word_embeddings: false` for the untied, unscaled v1.1 head.
    return bool(hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True)))


def config_from_hf(hf: dict, state: dict):
    """Our encdec model config for a T5 `config.json` (tied or not, as `state` says)."""
    proj = hf.get("feed_forward_proj", "relu")
    if proj not in ACTIVATIONS:
        raise ValueError(
            f"T5 feed_forward_proj={proj!r} is not supported; use one of {list(ACTIVATIONS)}"
        )
    untied = _untied(state)
    if untied and _scaled(hf):
        raise ValueError(
            "T5 with an untied lm_head and scaled decoder outputs has no equivalent here"
        )
    L = hf["num_layers"]
    n_dec = hf.get("num_decoder_layers") or L
    cfg = default_model_config("tiny")
    cfg.update(
        family="encdec",
        size=f"hf-t5-L{L}xD{hf['d_model']}",
        vocab_size=hf["vocab_size"],
        n_layers=L,
        n_decoder_layers=0 if n_dec == L else n_dec,  # 0: as many as the encoder
        d_model=hf["d_model"],
        n_heads=hf["num_heads"],
        n_kv_heads=0,
        d_head=hf["d_kv"],
        d_ff=hf["d_ff"],
        positions="relative",
        rel_buckets=hf.get("relative_attention_num_buckets", 32),
        rel_max_distance=hf.get("relative_attention_max_distance", 128),
        activation=ACTIVATIONS[proj],
        tie_embeddings=not untied,
        tied_output_scale=not untied and _scaled(hf),
        norm_type="rmsnorm",
        norm_position="pre",
        norm_eps=hf.get("layer_norm_epsilon", 1e-6),
        # dropout acts only in training (apply with rngs); T5 uses one rate everywhere (and also
        # after each final norm, which we do not)
        embed_dropout=hf.get("dropout_rate", 0.1),
        attn_dropout=hf.get("dropout_rate", 0.1),
        resid_dropout=hf.get("dropout_rate", 0.1),
        attn_bias=False,
        mlp_bias=False,
        attn_scale=False,
        embed_norm=False,
        type_vocab_size=0,
    )
    return cfg


def config_to_hf(cfg) -> dict:
    """A T5 `config.json` for our encdec config (inverse of `config_from_hf`)."""
    need = dict(
        family="encdec",
        positions="relative",
        norm_type="rmsnorm",
        norm_position="pre",
        attn_bias=False,
        mlp_bias=False,
        attn_scale=False,
        embed_norm=False,
        type_vocab_size=0,
    )
    require(cfg, "T5 export", **need)
    proj = inverse_name(ACTIVATIONS, cfg.activation, "T5")
    scaled = bool(cfg.tie_embeddings and cfg.tied_output_scale)
    return {
        "architectures": ["T5ForConditionalGeneration"],
        "model_type": MODEL_TYPE,
        "vocab_size": cfg.vocab_size,
        "d_model": cfg.d_model,
        "d_kv": cfg.d_head or cfg.d_model // cfg.n_heads,
        "d_ff": cfg.d_ff,
        "num_layers": cfg.n_layers,
        "num_decoder_layers": cfg.n_decoder_layers or cfg.n_layers,
        "num_heads": cfg.n_heads,
        "relative_attention_num_buckets": cfg.rel_buckets,
        "relative_attention_max_distance": cfg.rel_max_distance,
        "feed_forward_proj": proj,
        "layer_norm_epsilon": cfg.norm_eps,
        "dropout_rate": cfg.resid_dropout,
        # Both spellings: transformers < 5 reads tie_word_embeddings, >= 5 scale_decoder_outputs.
        "tie_word_embeddings": scaled,
        "scale_decoder_outputs": scaled,
        "is_encoder_decoder": True,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "decoder_start_token_id": 0,
    }


def _stack_rules(side: str, L: int, cfg) -> list[Rule]:
    D, N, F = cfg.d_model, cfg.n_heads, cfg.d_ff
    H = cfg.d_head or D // N
    b, ours = f"{side}.block.{{i}}.layer.", f"{side}/layers/"

    def attention(hf: str, prefix: str) -> list[Rule]:
        return [
            *(linear(f"{hf}.{n}.weight", ours + prefix + n, (D,), (N, H), layers=L) for n in "qkv"),
            linear(f"{hf}.o.weight", ours + prefix + "o", (N, H), (D,), layers=L),
        ]

    rs = attention(b + "0.SelfAttention", "")
    rs.append(Rule([b + "0.layer_norm.weight"], [ours + "ln1_scale"], layers=L))
    ff = 1
    if side == "decoder":
        rs += attention(b + "1.EncDecAttention", "cross_")
        rs.append(Rule([b + "1.layer_norm.weight"], [ours + "ln_cross_scale"], layers=L))
        ff = 2
    from models.blocks import GATED

    wis = ["wi_0", "wi_1"] if cfg.activation in GATED else ["wi"]
    rs += [
        linear(f"{b}{ff}.DenseReluDense.{n}.weight", ours + n, (D,), (F,), layers=L) for n in wis
    ]
    rs += [
        linear(f"{b}{ff}.DenseReluDense.wo.weight", ours + "wo", (F,), (D,), layers=L),
        Rule([f"{b}{ff}.layer_norm.weight"], [ours + "ln2_scale"], layers=L),
        Rule(
            [f"{side}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"],
            [f"{side}/rel_bias"],
        ),
        Rule([f"{side}.final_layer_norm.weight"], [f"{side}/final_ln_scale"]),
    ]
    return rs


def rules(cfg) -> list[Rule]:
    """Name and layout mapping between `T5ForConditionalGeneration` tensors and ours."""
    rs = [Rule(["shared.weight"], ["embed"])]
    rs += _stack_rules("encoder", cfg.n_layers, cfg)
    rs += _stack_rules("decoder", cfg.n_decoder_layers or cfg.n_layers, cfg)
    if not cfg.tie_embeddings:
        rs.append(linear("lm_head.weight", "unembed", (cfg.d_model,), (cfg.vocab_size,)))
    return rs


def params_from_hf(state: dict, cfg) -> dict:
    """Our encdec parameters from a `T5ForConditionalGeneration` state dict.

    Raises:
      ValueError: a stack's embedding copy differs from `shared` (untied input embeddings).
    """
    for copy in _COPIES:
        if not tied_equal(state, "shared.weight", copy):
            raise ValueError(f"this T5 checkpoint's {copy} differs from shared.weight")
    dropped = _COPIES + (("lm_head.weight",) if cfg.tie_embeddings else ())
    return import_state({k: v for k, v in state.items() if k not in dropped}, rules(cfg))


def params_to_hf(params: dict, cfg) -> dict:
    """The `T5ForConditionalGeneration` state dict of our parameters (tied copies left out)."""
    return export_state(params, rules(cfg))
