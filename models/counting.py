"""Parameter and FLOP counts from the config alone (closed form, checked against `init` in tests).

Conventions (recorded with every run so scaling fits never re-derive them):
- `non_embedding` (Kaplan et al. 2020) excludes token/position embedding tables and, when untied,
  the output unembedding; it includes norms.
- `flops_per_token` is the training cost (forward + backward = 3 x forward) of one token:
  6 x (matmul parameters incl. the output projection D x V) + the attention term
  12 x L x T x N x H (QK^T and AV over the full T x T window as computed; a causal kernel that
  skipped masked blocks would do half). Sparse layers (models/sparse_attention.py) count the keys
  their blockwise kernel scores per query instead of T (`keys_per_query`: 2w for local,
  2l + T/l for strided, l + c T/l for fixed), so the term is 12 x N x H x sum over layers.
  `flops_per_token_6n` = 6 x non-embedding parameters, the Kaplan C = 6ND convention.
"""

from models.sizes import resolved_dims
from models.sparse_attention import keys_per_query


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
    attention = 12 * N * H * sum(keys_per_query(cfg, i, seq_len) for i in range(L))
    return {
        "flops_per_token": float(6 * matmul_params + attention),
        "flops_per_token_6n": float(6 * count_params(cfg)["non_embedding"]),
        "attention_flops_per_token": float(attention),
    }
