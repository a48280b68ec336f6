"""Parameter and FLOP counts from the config alone (closed form, checked against `init` in tests).

Conventions (recorded with every run so scaling fits never re-derive them):
- `non_embedding` (Kaplan et al. 2020) excludes token/position embedding tables and, when untied,
  the output unembedding; it includes norms.
- `flops_per_token` is the training cost (forward + backward = 3 x forward) of one token:
  6 x (matmul parameters incl. the output projection D x V) + the attention term
  12 x L x T x N x H (QK^T and AV over the full T x T window as computed; a causal kernel that
  skipped masked blocks would do half). `flops_per_token_6n` = 6 x non-embedding parameters, the
  Kaplan C = 6ND convention.
"""

from models.sizes import resolved_dims


def count_params(cfg) -> dict[str, int]:
    """Total and non-embedding parameter counts of the decoder described by `cfg`."""
    L, D, N, K, H, F, V = resolved_dims(cfg)
    attn = D * N * H + 2 * D * K * H + N * H * D
    mlp = 2 * D * F
    norms = 2 * 2 * D
    per_layer = attn + mlp + norms
    embedding = V * D + (cfg.max_len * D if cfg.positions == "learned" else 0)
    unembed = 0 if cfg.tie_embeddings else D * V
    non_embedding = L * per_layer + 2 * D
    return {
        "total": non_embedding + embedding + unembed,
        "non_embedding": non_embedding,
        "embedding": embedding + unembed,
    }


def flops_per_token(cfg, seq_len: int) -> dict[str, float]:
    """Training FLOPs per token: the full count and the 6N approximation (see module docstring)."""
    L, D, N, K, H, F, V = resolved_dims(cfg)
    matmul_params = L * (D * N * H + 2 * D * K * H + N * H * D + 2 * D * F) + D * V
    attention = 12 * L * seq_len * N * H
    return {
        "flops_per_token": float(6 * matmul_params + attention),
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
