"""Model size table and the model config every family reads.

`size=` in experiment configs names one row; explicit fields override it. Aspect ratio follows the
GPT-3/Chinchilla ladders (d_model / n_layers between ~32 and ~128, head size 32-128).
"""

import ml_collections

# name: (n_layers, d_model, n_heads). d_ff = 4 * d_model unless overridden.
SIZES = {
    "tiny": (2, 128, 4),  # ~0.4M non-embedding parameters
    "mini": (3, 192, 4),  # ~1.3M
    "small": (4, 256, 4),  # ~3.1M, the CPU reference config
    "medium": (6, 384, 6),  # ~10.6M
    "large": (8, 512, 8),  # ~25M
    "base": (12, 768, 12),  # ~85M (GPT-2 small / BERT-base shape)
    "xl": (24, 1024, 16),  # ~302M
}


def default_model_config(size: str = "small") -> ml_collections.ConfigDict:
    """The model config with the shape of `size` filled in."""
    if size not in SIZES:
        raise ValueError(f"model.size={size!r} is unknown; choose one of {sorted(SIZES)}")
    n_layers, d_model, n_heads = SIZES[size]
    return ml_collections.ConfigDict(
        {
            "family": "decoder",
            "size": size,
            "vocab_size": 384,  # byte tokenizer (360 ids) padded to a multiple of 128
            "n_layers": n_layers,
            "d_model": d_model,
            "n_heads": n_heads,
            "n_kv_heads": 0,  # 0 = n_heads (MHA); fewer gives GQA, 1 gives MQA
            "d_head": 0,  # 0 = d_model // n_heads
            "d_ff": 4 * d_model,
            "max_len": 2048,  # rows of the learned position table
            "positions": "rotary",  # 'rotary' | 'learned'
            "rope_theta": 10000.0,
            "activation": "gelu",  # tanh-approximated GELU
            "tie_embeddings": True,
            "norm_eps": 1e-6,
            "init_std": 0.02,
            "dtype": "float32",  # activation / matmul dtype; parameters stay f32
            # 'python' (fastest on XLA:CPU) | 'scan' (fastest to compile on TPU)
            "layer_loop": "python",
            "remat": "none",  # a name in models.decoder.REMAT_POLICIES
            # Quantization-aware training (models/quant.py): fake-quantize matmul weights to this
            # many bits per output channel (0 = off; 8 or 4) and the inputs of every dense
            # matmul per row (0 = off; 8), straight-through gradients.
            "weight_bits": 0,
            "act_bits": 0,
        }
    )


def resolved_dims(cfg) -> tuple[int, int, int, int, int, int, int]:
    """(L, D, N, K, H, F, V) with the 0 = default fields resolved, validated."""
    L, D, N = cfg.n_layers, cfg.d_model, cfg.n_heads
    K = cfg.n_kv_heads or N
    if not cfg.d_head and D % N:
        raise ValueError(
            f"model.d_model={D} is not divisible by model.n_heads={N}; "
            "change one of them or set model.d_head"
        )
    H = cfg.d_head or D // N
    if N % K:
        raise ValueError(f"model.n_heads={N} is not divisible by model.n_kv_heads={K}")
    if H % 2 and cfg.positions == "rotary":
        raise ValueError(f"rotary positions need an even head size, got {H}; set model.d_head")
    return L, D, N, K, H, cfg.d_ff, cfg.vocab_size
