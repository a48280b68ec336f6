"""Reading and writing Hugging Face checkpoint directories, and the name-mapping machinery.

A Hugging Face directory holds `config.json` and the weights as `model.safetensors`, a sharded
`model.safetensors.index.json`, or a PyTorch state dict `pytorch_model.bin`. Weights are read into
numpy arrays (torch only for a `.bin`, JAX only for bfloat16 safetensors, which numpy cannot name).

Each family converter (hf/gpt2.py, hf_bert.py, hf_t5.py) is a list of `Rule`s: one rule
maps a few Hugging Face tensors to a few of our parameters with a pair of exactly inverse array
functions (transposes, reshapes, splits, concatenations: no arithmetic), so export after import
gives back the same bits. `import_state` and `export_state` apply the rules and fail if any tensor
on either side is left unmapped.
"""

import dataclasses
import json
import math
import os
from collections.abc import Callable, Sequence

import numpy as np

from common import atomic

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_BIN = "pytorch_model.bin"


def read_hf_config(hf_dir: str) -> dict:
    """config.json of a Hugging Face model directory, as a dict."""
    config_path = os.path.join(hf_dir, "config.json")
    if not os.path.exists(config_path):
        raise FileNotFoundError(
            f"{hf_dir} has no config.json; is it a Hugging Face model directory?"
        )
    with open(config_path) as f:
        return json.load(f)


def read_weights(hf_dir: str) -> dict[str, np.ndarray]:
    """The state dict in `hf_dir`: safetensors (single or sharded) first, else pytorch_model.bin."""
    if os.path.exists(os.path.join(hf_dir, SAFETENSORS)):
        return _load_safetensors(os.path.join(hf_dir, SAFETENSORS))
    if os.path.exists(os.path.join(hf_dir, SAFETENSORS_INDEX)):
        with open(os.path.join(hf_dir, SAFETENSORS_INDEX)) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        state = {}
        for shard in shards:
            state.update(_load_safetensors(os.path.join(hf_dir, shard)))
        return state
    if os.path.exists(os.path.join(hf_dir, TORCH_BIN)):
        import torch  # only needed for PyTorch-format checkpoints

        tensors = torch.load(os.path.join(hf_dir, TORCH_BIN), map_location="cpu", weights_only=True)
        return {k: _torch_to_numpy(v) for k, v in tensors.items()}
    raise FileNotFoundError(
        f"{hf_dir} holds neither {SAFETENSORS}, {SAFETENSORS_INDEX} nor {TORCH_BIN}"
    )


def _load_safetensors(path: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    try:
        return dict(load_file(path))
    except TypeError:  # bfloat16, which numpy cannot name: read through JAX (ml_dtypes arrays)
        from safetensors.flax import load_file as load_jax

        return {k: np.asarray(v) for k, v in load_jax(path).items()}


def _torch_to_numpy(t) -> np.ndarray:
    import torch

    if t.dtype == torch.bfloat16:  # same bits, viewed as ml_dtypes' bfloat16
        import ml_dtypes

        return t.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16).copy()
    return t.numpy().copy()


def write_hf_dir(hf_dir: str, config: dict, state: dict[str, np.ndarray]) -> None:
    """Writes config.json and model.safetensors into `hf_dir`, each file atomically."""
    from safetensors.numpy import save

    os.makedirs(hf_dir, exist_ok=True)
    # transformers refuses safetensors files whose metadata does not name a framework.
    data = save({k: np.ascontiguousarray(v) for k, v in state.items()}, metadata={"format": "pt"})
    atomic.write_bytes(os.path.join(hf_dir, SAFETENSORS), data)
    atomic.write_json(os.path.join(hf_dir, "config.json"), config)


# Switches no Hugging Face model of these families has (dotted paths into the model config).
_PLAIN = {"sparse.pattern": "dense", "mup.enabled": False}


def _field(cfg, path: str):
    for key in path.split("."):
        cfg = cfg[key]
    return cfg


def require(cfg, what: str, **need) -> None:
    """Raises a ValueError naming every model config field that `what` (e.g. 'GPT-2 export')
    cannot represent: each `need` field must have its given value, heads must be MHA."""
    need = _PLAIN | need
    wrong = [
        f"model.{k}={v!r} (got {_field(cfg, k)!r})" for k, v in need.items() if _field(cfg, k) != v
    ]
    if (cfg.n_kv_heads or cfg.n_heads) != cfg.n_heads:
        wrong.append(f"model.n_kv_heads=0 or {cfg.n_heads} (got {cfg.n_kv_heads})")
    if wrong:
        raise ValueError(f"{what} needs " + ", ".join(wrong))


def inverse_name(table: dict, value: str, what: str) -> str:
    """The first key of `table` mapping to `value` (our name -> Hugging Face name)."""
    for k, v in table.items():
        if v == value:
            return k
    raise ValueError(f"{what} has no equivalent of model.activation={value!r}")


def strip_prefix(state: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """Drops `prefix` from the keys that carry it (base-model checkpoints omit the head prefix)."""
    return {k.removeprefix(prefix): v for k, v in state.items()}


@dataclasses.dataclass(frozen=True)
class Rule:
    """Maps Hugging Face tensors `hf` to our parameters `ours` (paths joined by '/').

    `to_ours(*hf_arrays) -> tuple of our arrays` and `to_hf(*our_arrays) -> tuple of hf arrays`
    must be exact inverses. With `layers=L`, the names contain `{i}`: the rule is applied to each
    layer i < L and our arrays are stacked along a new leading `layers` axis.
    """

    hf: Sequence[str]
    ours: Sequence[str]
    to_ours: Callable = lambda *a: a
    to_hf: Callable = lambda *a: a
    layers: int = 0
    optional: bool = False  # a head some checkpoints lack: skipped when absent on the source side


def linear(hf: str, ours: str, in_shape, out_shape, *, layers: int = 0, optional=False) -> Rule:
    """A torch `nn.Linear` weight [out, in] <-> our `dense` weight of shape in_shape + out_shape."""
    n_in, n_out = math.prod(in_shape), math.prod(out_shape)
    return Rule(
        [hf],
        [ours],
        lambda w: (np.ascontiguousarray(w.T).reshape(*in_shape, *out_shape),),
        lambda w: (np.ascontiguousarray(w.reshape(n_in, n_out).T),),
        layers,
        optional,
    )


def reshaped(hf: str, ours: str, hf_shape, our_shape, *, layers: int = 0, optional=False) -> Rule:
    """One tensor stored under another shape on our side (e.g. a bias [N * H] <-> [N, H])."""
    return Rule(
        [hf],
        [ours],
        lambda b: (b.reshape(our_shape),),
        lambda b: (b.reshape(hf_shape),),
        layers,
        optional,
    )


def _as_tuple(x) -> tuple:
    return tuple(x) if isinstance(x, tuple | list) else (x,)


def import_state(
    state: dict[str, np.ndarray], rules: Sequence[Rule], *, ignore: Sequence[str] = ()
) -> dict:
    """Our nested parameter dict from a Hugging Face state dict.

    Args:
      state: Hugging Face names -> arrays.
      rules: the family's rules.
      ignore: suffixes of Hugging Face keys that are buffers or duplicates, not parameters.

    Raises:
      KeyError: a tensor the rules need is missing, or a tensor in `state` is not mapped.
    """
    used: set[str] = set()
    flat: dict[str, np.ndarray] = {}
    for rule in rules:
        for i in range(rule.layers) if rule.layers else [None]:
            names = [n.format(i=i) for n in rule.hf]
            missing = [n for n in names if n not in state]
            if rule.optional and len(missing) == len(names):
                continue
            if missing:
                raise KeyError(f"the Hugging Face checkpoint lacks {missing}")
            used.update(names)
            outs = _as_tuple(rule.to_ours(*(state[n] for n in names)))
            for name, out in zip(rule.ours, outs, strict=True):
                if rule.layers:
                    flat.setdefault(name, []).append(out)
                else:
                    flat[name] = out
    left = sorted(k for k in state if k not in used and not k.endswith(tuple(ignore)))
    if left:
        raise KeyError(f"Hugging Face tensors not mapped to any parameter: {left}")
    flat = {k: np.stack(v) if isinstance(v, list) else v for k, v in flat.items()}
    return unflatten(flat)


def export_state(params: dict, rules: Sequence[Rule]) -> dict[str, np.ndarray]:
    """The Hugging Face state dict of our nested parameters (exact inverse of `import_state`).

    Raises:
      KeyError: a parameter is not mapped by any rule, or a rule's parameter is missing.
    """
    flat = flatten(params)
    used: set[str] = set()
    state: dict[str, np.ndarray] = {}
    for rule in rules:
        missing = [n for n in rule.ours if n not in flat]
        if rule.optional and len(missing) == len(rule.ours):
            continue
        if missing:
            raise KeyError(f"the parameters lack {missing} (is the model config the right one?)")
        used.update(rule.ours)
        arrays = [np.asarray(flat[n]) for n in rule.ours]
        for i in range(rule.layers) if rule.layers else [None]:
            outs = _as_tuple(rule.to_hf(*(a if i is None else a[i] for a in arrays)))
            for name, out in zip(rule.hf, outs, strict=True):
                state[name.format(i=i)] = np.ascontiguousarray(out)
    left = sorted(k for k in flat if k not in used)
    if left:
        raise KeyError(f"parameters with no Hugging Face counterpart: {left}")
    return state


def flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    """{'a': {'b': x}} -> {'a/b': x}."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def unflatten(flat: dict[str, np.ndarray]) -> dict:
    """{'a/b': x} -> {'a': {'b': x}}."""
    tree: dict = {}
    for path, v in flat.items():
        *parents, leaf = path.split("/")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return tree


def tied_equal(state: dict[str, np.ndarray], a: str, b: str) -> bool:
    """Whether `state[b]` is absent or bitwise equal to `state[a]` (a tied duplicate)."""
    return b not in state or (
        state[a].shape == state[b].shape and np.array_equal(state[a], state[b])
    )
