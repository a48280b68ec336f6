"""The architecture of each model family as config arithmetic, shared by the experiments.

`set_family(config, family)` turns a base config into a decoder (GPT, causal LM), an encoder (BERT,
masked LM) or an encoder-decoder (T5, span corruption) run; call it after `data.seq_len` is set.
"""

from objectives.span_corruption import default_target_len


def bert_model(model) -> None:
    """Sets the BERT switches on a model config (models/sizes.py documents each)."""
    model.family = "encoder"
    model.norm_position = "post"
    model.embed_norm = True
    model.norm_eps = 1e-12
    model.positions = "learned"
    model.attn_bias = True
    model.mlp_bias = True
    model.activation = "gelu_exact"
    model.type_vocab_size = 2


def t5_model(model, version: str = "1.1") -> None:
    """Sets the T5 switches on a model config: v1.0 (ReLU, tied, rescaled) or v1.1 (GeGLU)."""
    if version not in ("1.0", "1.1"):
        raise ValueError(f"version={version!r} is unknown; use 1.0 or 1.1")
    model.family = "encdec"
    model.norm_type = "rmsnorm"
    model.norm_eps = 1e-6
    model.positions = "relative"
    model.attn_scale = False
    model.attn_bias = False
    model.mlp_bias = False
    if version == "1.0":
        model.activation = "relu"
        model.tie_embeddings = True
        model.tied_output_scale = True
    else:
        model.activation = "geglu"
        model.tie_embeddings = False


def set_family(config, family: str) -> None:
    """Model switches and objective of `family` ('decoder', 'encoder' or 'encdec')."""
    if family == "decoder":
        config.model.family, config.objective = "decoder", "causal_lm"
    elif family == "encoder":
        bert_model(config.model)
        config.model.max_len = config.data.seq_len
        config.objective = "masked_lm"
    elif family == "encdec":
        t5_model(config.model)
        config.objective = "span_corruption"
        a = config.objective_args
        a.target_len = default_target_len(config.data.seq_len, a.noise_density, a.mean_span)
    else:
        raise ValueError(f"family={family!r} is unknown; choose decoder, encoder or encdec")
