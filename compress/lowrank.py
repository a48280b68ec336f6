"""Low-rank factorisation of layer matmul weights by truncated SVD.

A weight W viewed as a matrix [in, out] (its input axes from compress/quant.py `input_axes`,
which for every layer weight lead its shape) becomes `{"a": [in..., r], "b": [r, out...]}` with
A = U_r sqrt(S_r), B = sqrt(S_r) V_r^T, the best rank-r approximation in Frobenius norm
(Eckart-Young). `layers.dense` computes `(x @ A) @ B`, so a factorised matrix costs r (in + out)
multiply-adds per token instead of in x out: the saving is real only when r < in out / (in + out).

The rank is given, or chosen as the smallest r whose leading singular values hold at least
`energy` of sum(s^2); one rank serves every layer of a stacked weight (the maximum over layers,
so that layers stay stacked), which only ever keeps more of a layer than asked.
"""

import numpy as np

from compress.quant import input_axes, logical_names

DEFAULT_TARGETS = ("q", "k", "v", "o", "wi", "wo")


def energy_rank(s_R: np.ndarray, energy: float) -> int:
    """Smallest r with sum(s[:r]^2) >= energy * sum(s^2)."""
    if not 0.0 < energy <= 1.0:
        raise ValueError(f"lowrank energy={energy} must be in (0, 1]")
    cum = np.cumsum(np.square(s_R.astype(np.float64)))
    return int(min(np.searchsorted(cum, energy * cum[-1] * (1 - 1e-12)) + 1, len(s_R)))


def factorize(w, in_axes: tuple[int, ...], *, rank: int = 0, energy: float = 0.0):
    """({"a": [L, in..., r], "b": [L, r, out...]} f32, r) of a stacked weight w [L, in..., out...]
    whose input axes `in_axes` follow `layers`, at `rank` (0: the smallest holding `energy`)."""
    w = np.asarray(w, np.float64)
    if tuple(in_axes) != tuple(range(1, len(in_axes) + 1)):
        raise ValueError(f"input axes {in_axes} do not lead the weight's shape {w.shape}")
    L = w.shape[0]
    in_shape, out_shape = w.shape[1 : 1 + len(in_axes)], w.shape[1 + len(in_axes) :]
    n_in, n_out = int(np.prod(in_shape)), int(np.prod(out_shape))
    u_LIR, s_LR, vt_LRO = np.linalg.svd(w.reshape(L, n_in, n_out), full_matrices=False)
    if rank <= 0:
        if energy <= 0:
            raise ValueError("lowrank needs a rank > 0 or an energy fraction in (0, 1]")
        rank = max(energy_rank(s, energy) for s in s_LR)
    rank = min(rank, s_LR.shape[1])
    root_LR = np.sqrt(s_LR[:, :rank])
    a = u_LIR[:, :, :rank] * root_LR[:, None, :]
    b = root_LR[:, :, None] * vt_LRO[:, :rank, :]
    factors = {
        "a": a.reshape(L, *in_shape, rank).astype(np.float32),
        "b": b.reshape(L, rank, *out_shape).astype(np.float32),
    }
    return factors, rank


def factorize_params(
    params, model, model_cfg, *, targets=DEFAULT_TARGETS, rank: int = 0, energy: float = 0.0
):
    """(params with each `layers` weight named in `targets` replaced by its factors, {name: rank
    used})."""
    names = logical_names(model, model_cfg)["layers"]
    layers, ranks = dict(params["layers"]), {}
    for key in targets:
        if key not in layers:
            raise ValueError(f"lowrank target {key!r} is not a layer weight; have {sorted(layers)}")
        axes = input_axes(names[key])
        if axes is None:
            raise ValueError(f"lowrank target {key!r} is not a matrix")
        layers[key], ranks[key] = factorize(layers[key], axes, rank=rank, energy=energy)
    return dict(params, layers=layers), ranks
