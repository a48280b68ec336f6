"""muP, the maximal update parametrization (Yang et al. 2022, "Tensor Programs V"), for Adam.

One switch, `model.mup.enabled=True`, for every family: the rules are keyed by parameter name (the
last key of its path: `q`, `wo`, `embed`, `ln1_scale`, ...), so a family gets muP by naming its
parameters from `ROLES` (or adding its names there). With the width multiplier
m = d_model / mup.base_width, the rules are TP5's Table 3, Adam column, in the form with an
output multiplier (its Table 8 / the `mup` package's MuReadout), chosen so that at m = 1 muP is
the standard parametrization (SP) except for the zero initialisations (`mup.zero_query`,
`mup.zero_readout`):

| role    | parameters                    | init std           | Adam LR | forward          |
| ------- | ----------------------------- | ------------------ | ------- | ---------------- |
| input   | embed, pos/type_embed, rel_b. | init_std           | lr      |                  |
| hidden  | q, k, v, o, wi(_0/_1), wo,    | init_std / sqrt(m) | lr / m  | attention 1/H    |
|         | cross_*, mlm_dense, pooler    |                    |         |                  |
| output  | unembed                       | init_std, or 0     | lr      | logits x mult/m  |
| head    | nsp, classifier               | 0                  | lr / m  |                  |
| vector  | norm scales and biases        | as SP              | lr      |                  |

- Hidden weights have variance 1/fan_in relative to the base (fan_in grows with m); `q` is
  zero-initialised with `mup.zero_query` (default; TP5 sec. D.2: attention starts uniform, at
  every width).
- Attention logits are scaled by sqrt(H_base) / H (1/H, matched to 1/sqrt(H) at the base head
  size) because q and k become correlated during training, so q.k grows like H, not sqrt(H).
- An untied readout keeps SP's init (its logits still shrink like 1/sqrt(m) through the output
  multiplier, as the `mup` package's MuReadout) or, with `mup.zero_readout`, starts at zero (TP5
  sec. D.2). Zero is not the default: on the embedded corpus it cost 0.18 nats of best loss
  after 300 steps and flattened the loss-vs-LR curves so that their argmin wandered (docs/mup.md).
  Tied embeddings are input-like (constant LR, SP init) and still get the output multiplier, as
  the `mup` package's MuSharedReadout.
- Adam's epsilon is scaled by 1/m: under muP every gradient entry is Theta(1/width) (the
  backward signal through the 1/m readout), so a fixed epsilon would swamp wide models' updates.
- The LR multipliers scale the whole AdamW update of a group, decoupled weight decay included
  (like a per-group `lr` in PyTorch).

All widths (d_model, d_ff, n_heads * d_head) are assumed to scale together with d_model; depth
and the number of heads stay fixed, as in TP5's width sweeps.
"""

import math

import jax
import jax.numpy as jnp

INPUT, HIDDEN, OUTPUT, HEAD, VECTOR = "input", "hidden", "output", "head", "vector"
ROLES = {
    "embed": INPUT,
    "pos_embed": INPUT,
    "type_embed": INPUT,
    "rel_bias": INPUT,  # [buckets, N]: no width-sized fan-in
    **{name: HIDDEN for name in ("q", "k", "v", "o", "wi", "wi_0", "wi_1", "wi_gate", "wo")},
    **{f"cross_{name}": HIDDEN for name in ("q", "k", "v", "o")},
    "mlm_dense": HIDDEN,
    "pooler": HIDDEN,
    "unembed": OUTPUT,
    # Small classifier heads get no output multiplier: TP5 Table 3's form, zero init and LR / m.
    "nsp": HEAD,
    "classifier": HEAD,
}
_ZERO_HEADS = ("nsp", "classifier")
_LR_OVER_M = (HIDDEN, HEAD)


def enabled(cfg) -> bool:
    return cfg.mup.enabled


def width_mult(cfg) -> float:
    """m = d_model / mup.base_width (1.0 when muP is off)."""
    if not enabled(cfg):
        return 1.0
    return cfg.d_model / cfg.mup.base_width  # base_width >= 1: declared in models/sizes.py


def role(name: str) -> str:
    """The muP role of a parameter from its name (the last key of its path).

    Raises:
      ValueError: an unknown name; add it to `ROLES` (norm scales/biases end in scale/bias).
    """
    if name in ROLES:
        return ROLES[name]
    if name.endswith("scale") or name.endswith("bias"):
        return VECTOR
    raise ValueError(
        f"models/mup.py has no muP role for parameter {name!r}; add it to mup.ROLES "
        "(input, hidden, output or vector)"
    )


def _name(path) -> str:
    return str(getattr(path[-1], "key", path[-1]))


def scale_init(params, cfg):
    """Rescales an SP initialisation to muP's (identity when muP is off).

    Works on boxed (`nn.LogicallyPartitioned`) or plain parameter trees: every rule is a constant
    factor on a normal or zero initialisation, so rescaling equals initialising with muP's std.
    """
    if not enabled(cfg):
        return params
    m = width_mult(cfg)
    zero = _ZERO_HEADS + (("q", "cross_q") if cfg.mup.zero_query else ())
    zero += ("unembed",) if cfg.mup.zero_readout else ()

    def rescale(path, p):
        name = _name(path)
        if name in zero:
            factor = 0.0
        elif role(name) == HIDDEN:
            factor = 1.0 / math.sqrt(m)
        else:
            return p
        return jax.tree.map(lambda w: w * jnp.asarray(factor, w.dtype), p)

    boxed = lambda x: hasattr(x, "unbox")
    return jax.tree_util.tree_map_with_path(rescale, params, is_leaf=boxed)


def attention_scale(cfg, head_dim: int) -> float | None:
    """Logit scale: None (1/sqrt(H)) under SP, sqrt(H_base) / H under muP."""
    if not enabled(cfg):
        return None
    base_head_dim = cfg.d_head or cfg.mup.base_width // cfg.n_heads  # fixed d_head: no scaling
    return math.sqrt(base_head_dim) / head_dim


def output_mult(cfg) -> float:
    """Multiplier of the output logits: mup.output_mult / m under muP, 1 under SP."""
    if not enabled(cfg):
        return 1.0
    return cfg.mup.output_mult / width_mult(cfg)


def lr_multipliers(params, cfg):
    """Per-parameter Adam LR multipliers (floats in the structure of `params`): 1/m for hidden."""
    m = width_mult(cfg)
    return jax.tree_util.tree_map_with_path(
        lambda path, _: 1.0 / m if role(_name(path)) in _LR_OVER_M else 1.0, params
    )


def adam_eps(eps: float, cfg) -> float:
    """Adam's epsilon scaled like the gradients (1/m under muP)."""
    return eps / width_mult(cfg)
