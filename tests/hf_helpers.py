"""Shared pieces of the Hugging Face conversion tests: random tiny torch models saved locally.

Nothing is downloaded: models are built from a `transformers` config, every parameter is perturbed
(HF initialises biases to 0 and norms to 1, which would hide a wrong mapping), and saved with
`save_pretrained` (safetensors) or as a PyTorch `pytorch_model.bin` state dict.
"""

import os

import numpy as np
import torch


def randomize(model: torch.nn.Module, seed: int, scale: float = 0.05) -> torch.nn.Module:
    """Adds N(0, scale^2) noise to every parameter (biases and norm scales included); eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return model.eval()


def save(model: torch.nn.Module, path: str, fmt: str) -> str:
    """Saves `model` to `path` as 'safetensors' (save_pretrained) or 'bin' (torch state dict)."""
    if fmt == "safetensors":
        model.save_pretrained(path)
    elif fmt == "bin":
        model.config.save_pretrained(path)
        torch.save(model.state_dict(), os.path.join(path, "pytorch_model.bin"))
    else:
        raise ValueError(fmt)
    return path


def max_abs_diff(ours, theirs: torch.Tensor, mask=None) -> float:
    """max |ours - theirs| over the positions where `mask` [B, T] is true (all if None)."""
    a, b = np.asarray(ours, np.float64), theirs.detach().numpy().astype(np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    d = np.abs(a - b)
    return float(d[np.asarray(mask, bool)].max() if mask is not None else d.max())


def padded_batch(rng: np.random.Generator, lengths, T: int, vocab: int, *, left=()):
    """Tokens [B, T] and a 0/1 mask, row b holding `lengths[b]` tokens, padded on the right
    (or on the left for rows in `left`); pad ids are random too, so masking must hide them."""
    tokens = rng.integers(0, vocab, (len(lengths), T)).astype(np.int64)
    mask = np.zeros((len(lengths), T), np.int64)
    for b, n in enumerate(lengths):
        if b in left:
            mask[b, T - n :] = 1
        else:
            mask[b, :n] = 1
    return tokens, mask


def assert_round_trip(src: str, out: str, tied_copies=()) -> tuple:
    """Imports `src`, exports to `out`, and checks that every tensor comes back bitwise (same
    names, dtypes, values) and that re-importing gives the same config and parameters.
    `tied_copies` names duplicates of tied tensors that a torch state dict holds and the export
    (like `save_pretrained`) leaves out.

    Returns:
      (our model config, our parameters) of `src`.
    """
    from hf import convert as hf
    from hf import files as hf_io

    original = hf_io.read_weights(src)
    cfg, params = hf.load_hf(src)
    hf.save_hf(out, cfg, params)
    exported = hf_io.read_weights(out)
    assert exported.keys() == original.keys() - set(tied_copies)
    for k, got in exported.items():
        want = original[k]
        assert got.dtype == want.dtype and got.shape == want.shape, k
        assert got.tobytes() == want.tobytes(), k
    cfg2, params2 = hf.load_hf(out)
    assert cfg2.to_dict() == cfg.to_dict()
    flat, flat2 = hf_io.flatten(params), hf_io.flatten(params2)
    assert flat.keys() == flat2.keys()
    assert all(flat[k].tobytes() == flat2[k].tobytes() for k in flat)
    return cfg, params


def assert_same_tree_as_init(params: dict, cfg) -> None:
    """The converted parameters have exactly the names and shapes `init` gives for `cfg`, so they
    can stand in for a freshly initialised model (and its sharding annotations)."""
    import flax.linen as nn
    import jax

    from hf import files as hf_io
    from models import get_model

    model = get_model(cfg.family)
    abstract = nn.unbox(jax.eval_shape(lambda k: model.init(k, cfg), jax.random.key(0)))
    want = {k: v.shape for k, v in hf_io.flatten(abstract).items()}
    got = {k: v.shape for k, v in hf_io.flatten(params).items()}
    assert got == want


def our_random_model(cfg, seed: int = 0, std: float = 0.05) -> dict:
    """Random parameters with exactly the names and shapes of our `init` for `cfg` (numpy; norm
    scales 1 + noise, everything else noise: init's zero biases would hide a wrong mapping).
    Read off `jax.eval_shape(init)`, so nothing is compiled."""
    import flax.linen as nn
    import jax

    from hf import files as hf_io
    from models import get_model

    init = get_model(cfg.family).init
    abstract = nn.unbox(jax.eval_shape(lambda k: init(k, cfg), jax.random.key(0)))
    rng = np.random.default_rng(seed)
    flat = {
        k: (rng.standard_normal(v.shape) * std + k.endswith("_scale")).astype(v.dtype)
        for k, v in hf_io.flatten(abstract).items()
    }
    return hf_io.unflatten(flat)


def small(cfg, **overrides):
    """`cfg` shrunk to a seconds-long test model (1 layer, d_model 32, 2 heads, vocab 64)."""
    shape = dict(n_layers=1, d_model=32, n_heads=2, d_ff=64, vocab_size=64, max_len=32)
    cfg.update({**shape, **overrides})
    return cfg


def assert_reimport_matches(out: str, cfg, params, ignore=("size",)) -> None:
    """Importing the exported `out` gives `cfg` back (but for label-like `ignore` fields, which
    the Hugging Face format does not carry) and bitwise the same parameters."""
    from hf import convert as hf
    from hf import files as hf_io

    cfg2, params2 = hf.load_hf(out)
    drop = lambda c: {k: v for k, v in c.to_dict().items() if k not in ignore}
    assert drop(cfg2) == drop(cfg)
    flat, flat2 = hf_io.flatten(params), hf_io.flatten(params2)
    assert flat.keys() == flat2.keys()
    assert all(np.asarray(flat[k]).tobytes() == flat2[k].tobytes() for k in flat)
