"""Model size tables and the model config every family reads.

`size=` in experiment configs names one row of `SIZES` (the ladder this codebase trains) or of
`PUBLISHED` (shapes of published models, for the accelerator presets); explicit fields override
it. Aspect ratio of the ladder follows the GPT-3/Chinchilla ladders (d_model / n_layers between
~32 and ~128, head size 32-128).
"""

import ml_collections

from models.blocks import GATED, NORMS, POSITIONS, REMAT_POLICIES
from models.layers import ACTIVATIONS
from models.sparse_attention import PATTERNS, sparse_layer_set

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

# Published models: the shape fields each one sets (d_ff = 4 * d_model and MHA unless given).
# Only shapes live here; the architecture switches (norms, activation, positions, tying) and the
# vocabulary are the experiment's (experiments/gpt3.py, llama.py, t5.py, bert.py).
PUBLISHED = {
    # GPT-3 (Brown et al. 2020, Table 2.1). gpt3-125m and gpt3-350m are the shapes of `base` and
    # `xl`. Two rows of the table are inconsistent with its own parameter counts: 1.3B prints 24
    # heads of 128 (attention width 3072, which would make 1.52B parameters): 16 heads of 128, as
    # Megatron-LM's and GPT-Neo's 1.3B configs use; 13B prints d_model 5140 = 40 x 128.5: 5120.
    "gpt3-125m": {"n_layers": 12, "d_model": 768, "n_heads": 12},
    "gpt3-350m": {"n_layers": 24, "d_model": 1024, "n_heads": 16},
    "gpt3-760m": {"n_layers": 24, "d_model": 1536, "n_heads": 16},
    "gpt3-1.3b": {"n_layers": 24, "d_model": 2048, "n_heads": 16},
    "gpt3-2.7b": {"n_layers": 32, "d_model": 2560, "n_heads": 32},
    "gpt3-6.7b": {"n_layers": 32, "d_model": 4096, "n_heads": 32},
    "gpt3-13b": {"n_layers": 40, "d_model": 5120, "n_heads": 40},
    "gpt3-175b": {"n_layers": 96, "d_model": 12288, "n_heads": 96},
    # Llama 3 (Grattafiori et al. 2024, Table 3) and Llama 3.2 1B (its model card / config.json).
    "llama3.2-1b": {"n_layers": 16, "d_model": 2048, "n_heads": 32, "n_kv_heads": 8, "d_ff": 8192},
    "llama3-8b": {"n_layers": 32, "d_model": 4096, "n_heads": 32, "n_kv_heads": 8, "d_ff": 14336},
    "llama3-70b": {"n_layers": 80, "d_model": 8192, "n_heads": 64, "n_kv_heads": 8, "d_ff": 28672},
    # T5 v1.1 (the t5x / HF google/t5-v1_1-* configs): 24 encoder and 24 decoder layers, d_kv 64.
    "t5.1.1-xl": {"n_layers": 24, "d_model": 2048, "n_heads": 32, "d_head": 64, "d_ff": 5120},
    "t5.1.1-xxl": {"n_layers": 24, "d_model": 4096, "n_heads": 64, "d_head": 64, "d_ff": 10240},
    # BERT-large (Devlin et al. 2019): L=24, H=1024, A=16, intermediate 4096.
    "bert-large": {"n_layers": 24, "d_model": 1024, "n_heads": 16},
}


DTYPES = ("float32", "bfloat16")
_DROPOUT = {"type": float, "min": 0.0, "below": 1.0}

# Type, range and allowed values of every `model` field (train/validate.py `check_fields` reads
# this: keys `type`, `choices`, `min`/`max` inclusive, `above`/`below` exclusive, a bound may
# name a sibling field, `check(block)` raises ValueError). `family` is a registry name
# (models.get_model), checked there so that a family added elsewhere needs no edit here.
MODEL_FIELDS = {
    "family": {"type": str},
    # A label once the shape is built (a SIZES row, or a sweep rung's 'L4xD256'): overriding it
    # alone changes no dimension; the experiment argument size= picks the row.
    "size": {"type": str},
    "vocab_size": {"type": int, "min": 1},
    # sparse.layers names layer indices: checked here, where n_layers is a sibling.
    "n_layers": {"type": int, "min": 1, "check": sparse_layer_set},
    "d_model": {"type": int, "min": 1},
    "n_heads": {"type": int, "min": 1},
    "n_kv_heads": {"type": int, "min": 0},
    "d_head": {"type": int, "min": 0},
    "d_ff": {"type": int, "min": 1},
    "max_len": {"type": int, "min": 1},
    "positions": {"choices": POSITIONS},
    "rope_theta": {"type": float, "above": 0.0},
    "rel_buckets": {"type": int, "min": 2},
    "rel_max_distance": {"type": int, "min": 1},
    "activation": {"choices": (*ACTIVATIONS, *GATED)},
    "tie_embeddings": {"type": bool},
    "tied_output_scale": {"type": bool},
    "norm_type": {"choices": NORMS},
    "norm_position": {"choices": ("pre", "post")},
    "norm_eps": {"type": float, "above": 0.0},
    "norm_bias": {"type": bool},
    "attn_bias": {"type": bool},
    "mlp_bias": {"type": bool},
    "attn_scale": {"type": bool},
    "embed_norm": {"type": bool},
    "type_vocab_size": {"type": int, "min": 0},
    "embed_dropout": _DROPOUT,
    "attn_dropout": _DROPOUT,
    "resid_dropout": _DROPOUT,
    "nsp_head": {"type": bool},
    "num_classes": {"type": int, "min": 0},
    "n_decoder_layers": {"type": int, "min": 0},
    "init_std": {"type": float, "above": 0.0},
    "dtype": {"choices": DTYPES},
    "attn_logits_dtype": {"choices": DTYPES},
    "loss_dtype": {"choices": DTYPES},
    "mup": {  # models/mup.py
        "enabled": {"type": bool},
        "base_width": {"type": int, "min": 1},
        "output_mult": {"type": float, "above": 0.0},
        "zero_query": {"type": bool},
        "zero_readout": {"type": bool},
    },
    "layer_loop": {"choices": ("python", "scan")},
    "remat": {"choices": tuple(REMAT_POLICIES)},
    "attention_impl": {"choices": ("xla", "splash", "flash", "cudnn")},  # kernels/attention.py
    "causal_blocks": {"type": int, "min": 1},
    "sparse": {  # models/sparse_attention.py
        "pattern": {"choices": PATTERNS},
        "window": {"type": int, "min": 1},
        "layers": {"type": str},  # its indices are checked against n_layers (above)
        "stride": {"type": int, "min": 0},
        "summary": {"type": int, "min": 1},
    },
}


def default_model_config(size: str = "small") -> ml_collections.ConfigDict:
    """The model config with the shape of `size` (a row of `SIZES` or `PUBLISHED`) filled in."""
    if size in SIZES:
        n_layers, d_model, n_heads = SIZES[size]
        shape = {}
    elif size in PUBLISHED:
        shape = PUBLISHED[size]
        n_layers, d_model, n_heads = shape["n_layers"], shape["d_model"], shape["n_heads"]
    else:
        raise ValueError(
            f"model.size={size!r} is unknown; choose one of {sorted(SIZES)} or a published "
            f"shape {sorted(PUBLISHED)}"
        )
    cfg = ml_collections.ConfigDict(
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
            # 'rotary' | 'learned' | 'sinusoidal' | 'relative' (T5 bucketed bias) | 'none'
            "positions": "rotary",
            "rope_theta": 10000.0,
            "rel_buckets": 32,  # relative: buckets per table (half per direction if bidirectional)
            "rel_max_distance": 128,  # relative: distances beyond share the last bucket
            # gelu (tanh approx.) | gelu_exact | relu | silu | swiglu | geglu | geglu_exact | reglu;
            # gated ones (models/blocks.GATED) have separate wi_0 (gated) and wi_1 matrices
            "activation": "gelu",
            "tie_embeddings": True,
            "tied_output_scale": False,  # multiply by d_model**-0.5 before tied logits (T5 v1.0)
            "norm_type": "layernorm",  # 'layernorm' | 'rmsnorm' (T5: no mean, no bias)
            "norm_position": "pre",  # 'pre' (GPT-2, T5) | 'post' (BERT; no final norm)
            "norm_eps": 1e-6,
            "norm_bias": True,  # LayerNorm biases
            "attn_bias": False,  # biases on q, k, v, o
            "mlp_bias": False,  # biases on wi (wi_0, wi_1) and wo
            "attn_scale": True,  # scale logits by 1/sqrt(head dim) (T5 does not)
            "embed_norm": False,  # norm after the embeddings (BERT)
            "type_vocab_size": 0,  # > 0 adds token-type embeddings (BERT segments A/B)
            # dropout rates, active only when apply gets `rngs` (training)
            "embed_dropout": 0.0,
            "attn_dropout": 0.0,  # on attention probabilities
            "resid_dropout": 0.0,  # on each sublayer's output before the residual add
            # encoder family heads (models/encoder.py)
            "nsp_head": False,  # next-sentence prediction head on the pooled first token
            "num_classes": 0,  # > 0 adds a sequence-classification head
            # encoder-decoder family: decoder layers (0 = n_layers)
            "n_decoder_layers": 0,
            "init_std": 0.02,
            # Precision per part; parameters and optimizer state are always f32.
            "dtype": "float32",  # activations and matmuls ('bfloat16' for mixed precision)
            "attn_logits_dtype": "float32",  # attention logits q.k, softmax and its backward
            "loss_dtype": "float32",  # unembedding output (logits) and the log-softmax
            # muP (models/mup.py): width-independent init, LRs and forward multipliers.
            "mup": {
                "enabled": False,
                "base_width": 128,  # d_model at which muP equals SP (but for its zero inits)
                "output_mult": 1.0,  # logits x output_mult * base_width / d_model
                "zero_query": True,  # q (and cross_q) start at zero: uniform attention
                # An untied readout starting at zero (TP5 sec. D.2) cost 0.18 nats of best loss
                # after 300 steps here and flattened the loss-vs-LR curves (docs/mup.md); off, it
                # keeps SP's init and the 1/m output multiplier still shrinks its logits with width.
                "zero_readout": False,
            },
            # 'python' (fastest on XLA:CPU) | 'scan' (fastest to compile on TPU)
            "layer_loop": "python",
            "remat": "none",  # a name in models.decoder.REMAT_POLICIES
            # Attention kernel (kernels/attention.py has the table of what each supports):
            # 'xla' (models/layers.dot_attention with a [B, 1, T, S] mask bias; everything) |
            # 'splash' | 'flash' (Pallas TPU kernels; interpreted on CPU) | 'cudnn' (NVIDIA GPU,
            # bf16). The kernels take causality, packed segments and a local window as data, so
            # no T x S bias is built; not with positions='relative', attn_dropout, a prefix_mask
            # or bf16 logits. KV-cache generation always uses 'xla'.
            "attention_impl": "xla",
            # 'xla' attention under a causal mask: the queries in this many blocks, each reading
            # only the keys up to its last query (exact; skips ~3/8 of the work at 4, for more
            # ops to compile). 1 = off; the CPU presets of experiments/gpt.py use 4.
            "causal_blocks": 1,
            # Sparse/local attention (models/sparse_attention.py states each pattern exactly).
            "sparse": {
                # 'dense' | 'local' (the `window` latest keys) | 'strided' (Sparse Transformer:
                # the `stride` latest keys, then every `stride`-th) | 'fixed' (own block of
                # `stride` keys + the last `summary` keys of every block).
                "pattern": "dense",
                "window": 256,  # w of 'local'
                # which layers use `pattern` (the others are dense): 'all' | 'alternate' (odd
                # layers, GPT-3's alternating dense/sparse) | a comma list of indices, '0,2'
                "layers": "all",
                "stride": 128,  # l of 'strided' and 'fixed'; 0 = ceil(sqrt(seq_len))
                "summary": 32,  # c of 'fixed' (Child et al.'s enwik8 setting: l=128, c=32)
            },
        }
    )
    cfg.update(shape)
    return cfg


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
    for field in ("dtype", "attn_logits_dtype", "loss_dtype"):
        if cfg.get(field, "float32") not in DTYPES:
            raise ValueError(f"model.{field}={cfg.get(field)!r} is not one of {DTYPES}")
    return L, D, N, K, H, cfg.d_ff, cfg.vocab_size
