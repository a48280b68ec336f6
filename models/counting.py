"""Parameter and FLOP counts from the config alone (closed form, checked against `init` in tests).

Conventions (recorded with every run so scaling fits never re-derive them):
- `non_embedding` (Kaplan et al. 2020) excludes the tables indexed by token, position or token type
  (token/position/type embeddings, T5's relative-position bias tables) and, when untied, the output
  unembedding and the encoder's vocabulary-sized output bias; it includes norms, biases and heads.
- `flops_per_token` is the training cost (forward + backward = 3 x forward) of one token:
  6 x (matmul parameters incl. the output projection D x V) + the attention term
  12 x L x T x N x H (QK^T and AV over the full T x T window as computed; a causal kernel that
  skipped masked blocks would do half). `flops_per_token_6n` = 6 x non-embedding parameters, the
  Kaplan C = 6ND convention. Biases, norms and softmax are not counted. Sparse layers
  (models/sparse_attention.py) count the keys their blockwise kernel scores per query instead of
  T (`keys_per_query`: 2w for local, 2l + T/l for strided, l + c T/l for fixed, causal), so the
  decoder/encoder term is 12 x N x H x (sum over layers of keys per query).
- encoder (BERT): the same per token, with bidirectional attention over T, plus the masked-LM head
  transform (D x D); the output projection is counted at every position (as computed).
- encdec (T5): per *input* token, i.e. the FLOPs of one row (T encoder tokens, `target_len`
  decoder tokens) divided by T: encoder layers over T, decoder layers (self-attention, the cross
  q/o projections, MLP, output projection) over target_len, cross k/v projections over T, and the
  attention terms 12 L_e T^2 NH + 12 L_d (target_len^2 + target_len T) NH, all over T.
"""

from models.blocks import GATED
from models.sizes import resolved_dims
from models.sparse_attention import keys_per_query


def _norm(cfg) -> int:
    """Parameters of one norm over D."""
    both = cfg.norm_type == "layernorm" and cfg.norm_bias
    return cfg.d_model * (2 if both else 1)


def _attn_matmul(cfg) -> int:
    L, D, N, K, H, F, V = resolved_dims(cfg)
    return D * N * H + 2 * D * K * H + N * H * D


def _attn_params(cfg) -> int:
    L, D, N, K, H, F, V = resolved_dims(cfg)
    return _attn_matmul(cfg) + (N * H + 2 * K * H + D if cfg.attn_bias else 0)


def _mlp_matmul(cfg) -> int:
    n_in = 2 if cfg.activation in GATED else 1
    return (n_in + 1) * cfg.d_model * cfg.d_ff


def _mlp_params(cfg) -> int:
    n_in = 2 if cfg.activation in GATED else 1
    return _mlp_matmul(cfg) + (n_in * cfg.d_ff + cfg.d_model if cfg.mlp_bias else 0)


def _layer(cfg, cross: bool = False) -> int:
    """Parameters of one block (self-attention, optional cross-attention, MLP, their norms)."""
    n = _attn_params(cfg) + _mlp_params(cfg) + 2 * _norm(cfg)
    return n + (_attn_params(cfg) + _norm(cfg) if cross else 0)


def _tables(cfg) -> int:
    """Token, position and token-type tables (not the output projection)."""
    L, D, N, K, H, F, V = resolved_dims(cfg)
    n = V * D + (cfg.max_len * D if cfg.positions == "learned" else 0)
    return n + cfg.type_vocab_size * D


def _rel_tables(cfg) -> int:
    return cfg.rel_buckets * cfg.n_heads if cfg.positions == "relative" else 0


def _decoder_len(cfg) -> int:
    return cfg.n_decoder_layers or cfg.n_layers


def count_params(cfg) -> dict[str, int]:
    """Total and non-embedding parameter counts of the model described by `cfg` (any family)."""
    L, D, N, K, H, F, V = resolved_dims(cfg)
    final = _norm(cfg) if cfg.norm_position == "pre" else 0
    emb_norm = _norm(cfg) if cfg.embed_norm else 0
    unembed = 0 if cfg.tie_embeddings else D * V
    if cfg.family == "decoder":
        non_embedding = L * _layer(cfg) + final + emb_norm
        embedding = _tables(cfg) + _rel_tables(cfg) + unembed
    elif cfg.family == "encoder":
        mlm_head = D * D + D + _norm(cfg)
        pooled = cfg.nsp_head or cfg.num_classes
        heads = (D * D + D if pooled else 0) + (2 * D + 2 if cfg.nsp_head else 0)
        heads += cfg.num_classes * (D + 1)
        non_embedding = L * _layer(cfg) + final + emb_norm + mlm_head + heads
        embedding = _tables(cfg) + _rel_tables(cfg) + unembed + V
    elif cfg.family == "encdec":
        layers = L * _layer(cfg) + _decoder_len(cfg) * _layer(cfg, cross=True)
        non_embedding = layers + 2 * final + emb_norm
        embedding = _tables(cfg) + 2 * _rel_tables(cfg) + unembed
    else:
        raise ValueError(f"model.family={cfg.family!r} is unknown")
    return {
        "total": non_embedding + embedding,
        "non_embedding": non_embedding,
        "embedding": embedding,
    }


def flops_per_token(cfg, seq_len: int, target_len: int | None = None) -> dict[str, float]:
    """Training FLOPs per token: the full count and the 6N approximation (see module docstring).

    Args:
      cfg: the model config.
      seq_len: tokens per row T (encoder input length for encdec).
      target_len: decoder tokens per row (encdec only; None: as long as the input).
    """
    L, D, N, K, H, F, V = resolved_dims(cfg)
    layer = _attn_matmul(cfg) + _mlp_matmul(cfg)
    if cfg.family in ("decoder", "encoder"):
        head = D * D if cfg.family == "encoder" else 0
        matmul = 6 * (L * layer + head + D * V)
        causal = cfg.family == "decoder"
        keys = sum(keys_per_query(cfg, i, seq_len, causal) for i in range(L))
        attention = 12 * N * H * keys
    elif cfg.family == "encdec":
        T, S = seq_len, target_len or seq_len
        Ld = _decoder_len(cfg)
        cross_q_o = 2 * D * N * H
        cross_kv = 2 * D * K * H
        row = 6 * (L * layer * T + Ld * (layer + cross_q_o) * S + Ld * cross_kv * T + D * V * S)
        matmul = row / T
        attention = 12 * N * H * (L * T * T + Ld * (S * S + S * T)) / T
    else:
        raise ValueError(f"model.family={cfg.family!r} is unknown")
    return {
        "flops_per_token": float(matmul + attention),
        "flops_per_token_6n": float(6 * count_params(cfg)["non_embedding"]),
        "attention_flops_per_token": float(attention),
    }


def count_tree(params, cfg, seq_len: int) -> dict[str, float]:
    """Counts of a (possibly compressed) parameter tree, with the conventions above.

    Low-rank factors count their own sizes, pruned weights count in `*_nonzero`; the attention
    term comes from `cfg` (structured pruning changes it through `n_heads`). For an uncompressed
    tree `params` and `flops_per_token` equal `count_params(cfg)["total"]` and
    `flops_per_token(cfg, seq_len)["flops_per_token"]`.

    Args:
      params: unboxed f32 parameters (dequantize an int8 tree first).
      cfg: the model config they belong to.
      seq_len: tokens per sequence (the attention term).
    """
    import jax
    import numpy as np

    L, D, N, K, H, F, V = resolved_dims(cfg)
    sizes = lambda tree: sum(int(np.size(x)) for x in jax.tree.leaves(tree))
    nonzero = lambda tree: sum(int(np.count_nonzero(np.asarray(x))) for x in jax.tree.leaves(tree))
    # Per-layer matrices are the stacked leaves of rank >= 3 ([L, in, out...], or factors).
    matmul = [x for x in jax.tree.leaves(params["layers"]) if np.ndim(x) >= 3]
    attention = 12 * L * seq_len * N * H
    return {
        "params": float(sizes(params)),
        "params_nonzero": float(nonzero(params)),
        "flops_per_token": float(6 * (sizes(matmul) + D * V) + attention),
        "flops_per_token_nonzero": float(6 * (nonzero(matmul) + D * V) + attention),
    }
