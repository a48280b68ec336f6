"""Adapting a pre-trained model: what to load, what to train, what to freeze.

`config.adapt.method` picks the parameter tree the train state holds:
  'full'    the model's own tree (full fine-tuning; `adapt.freeze` may still freeze parts)
  'lora'    {'base': model tree, 'lora': adapters} (adapt/lora.py), base frozen
  'prompt'  {'base': model tree, 'prompt': {'embeds'}} (adapt/prompt.py), base frozen
`wrap_model` gives the loop an object with the family's `init`/`apply` contract over that tree.
Frozen parameters pass through `stop_gradient` in `apply` (their gradients are never computed) and
get `optax.set_to_zero` through `optax.multi_transform`, so they hold no optimizer state.

`--config.init_from=DIR` (a run's workdir or its checkpoints directory) loads parameters into the
model tree (`base` for lora/prompt) before step 1: every leaf whose path matches `adapt.load` (a
regex over '/'-joined paths, default all) and exists in the checkpoint with the same shape; leaves
the checkpoint lacks (a new classification head) keep their initialisation. A leaf present with
another shape is an error naming it (exclude it with `adapt.load`).
"""

import os
import re
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax

from adapt import lora
from adapt import prompt as prompt_tuning
from train.recipe import Recipe
from train.validate import check_fields

METHODS = ("full", "lora", "prompt")


def _regex(field: str):
    def check(block) -> None:
        value = block[field]
        for part in value.split(",") if field == "targets" else [value]:
            try:
                re.compile(part)
            except re.error as e:
                raise ValueError(f"not a regular expression ({e}); fix the pattern") from e

    return check


# Type, range and allowed values of every `adapt` field (the keys: models/sizes.py MODEL_FIELDS).
ADAPT_FIELDS = {
    "method": {"choices": METHODS},
    "init_step": {"type": int, "min": -1},
    "load": {"type": str, "check": _regex("load")},
    "freeze": {"type": str, "check": _regex("freeze")},
    "lora": {
        "rank": {"type": int, "min": 1},
        "alpha": {"type": float, "above": 0.0},
        "dropout": {"type": float, "min": 0.0, "below": 1.0},
        "targets": {"type": str, "check": _regex("targets")},
    },
    "prompt": {
        "length": {"type": int, "min": 1},
        "init": {"choices": ("vocab", "random")},
        "first_id": {"type": int, "min": 0},
    },
}


def default_adapt_config() -> ml_collections.ConfigDict:
    """The `adapt` block of a run config (defaults: ordinary training, nothing frozen)."""
    return ml_collections.ConfigDict(
        {
            "method": "full",
            "init_step": -1,  # checkpoint step of `init_from` to load (-1: newest)
            "load": ".*",  # regex over '/'-joined parameter paths to take from `init_from`
            "freeze": "",  # regex of parameter paths to freeze (full); lora/prompt freeze base/
            "lora": lora.default_lora_config(),
            "prompt": prompt_tuning.default_prompt_config(),
        }
    )


def path_str(path) -> str:
    return "/".join(str(getattr(k, "key", k)) for k in path)


def _box_replicated(tree: dict, lead_axis: bool) -> dict:
    def box(path, x):
        axes = [None] * x.ndim
        if lead_axis and "layers" in path_str(path).split("/")[:-2] and x.ndim == 3:
            axes[0] = "layers"
        return nn.LogicallyPartitioned(x, names=tuple(axes))

    return jax.tree_util.tree_map_with_path(box, tree)


class AdaptedModel:
    """A family module seen through an adaptation method (same `init`/`apply` contract)."""

    def __init__(self, model, adapt_cfg, vocab_size: int):
        if adapt_cfg.method not in METHODS:
            raise ValueError(
                f"adapt.method={adapt_cfg.method!r} is unknown; choose one of {METHODS}"
            )
        self.model, self.cfg, self.vocab_size = model, adapt_cfg, vocab_size

    def init(self, rng: jax.Array, model_cfg) -> dict:
        base_key, extra_key = jax.random.split(rng)
        base = self.model.init(base_key, model_cfg)
        method = self.cfg.method
        if method == "full":
            return base
        unboxed = nn.unbox(base)
        if method == "lora":
            adapters = lora.init(extra_key, unboxed, self.cfg.lora)
            return {"base": base, "lora": _box_replicated(adapters, lead_axis=True)}
        if model_cfg.get("family", "decoder") != "decoder":
            raise ValueError("adapt.method='prompt' supports model.family='decoder' only")
        prompt = prompt_tuning.init(extra_key, unboxed, self.cfg.prompt, self.vocab_size)
        return {"base": base, "prompt": _box_replicated(prompt, lead_axis=False)}

    def apply(self, params: dict, batch: dict, model_cfg, *, rngs=None):
        method = self.cfg.method
        if method == "full":
            frozen = freeze_labels(params, self.cfg)
            params = jax.tree.map(
                lambda p, f: jax.lax.stop_gradient(p) if f == "frozen" else p, params, frozen
            )
            return self.model.apply(params, batch, model_cfg, rngs=rngs)
        base = jax.lax.stop_gradient(params["base"])
        if method == "lora":
            lora_rng, rngs = (None, rngs) if rngs is None else jax.random.split(rngs)
            merged = lora.merge(base, params["lora"], self.cfg.lora, rng=lora_rng)
            return self.model.apply(merged, batch, model_cfg, rngs=rngs)
        return prompt_tuning.apply(
            self.model.apply, base, params["prompt"], batch, model_cfg, rngs=rngs
        )


def freeze_labels(params: Any, adapt_cfg) -> Any:
    """'frozen' / 'trainable' per leaf: lora/prompt freeze `base/`; full freezes `adapt.freeze`."""
    if adapt_cfg.method in ("lora", "prompt"):
        pattern = re.compile(r"base/.*")
    elif adapt_cfg.freeze:
        pattern = re.compile(adapt_cfg.freeze)
    else:
        pattern = None

    def label(path, _):
        return "frozen" if pattern is not None and pattern.match(path_str(path)) else "trainable"

    return jax.tree_util.tree_map_with_path(label, params)


def freeze_optimizer(optimizer: optax.GradientTransformation, adapt_cfg):
    """`optimizer` on trainable leaves, `set_to_zero` (no state) on frozen ones."""
    if adapt_cfg.method == "full" and not adapt_cfg.freeze:
        return optimizer
    return optax.multi_transform(
        {"trainable": optimizer, "frozen": optax.set_to_zero()},
        lambda params: freeze_labels(params, adapt_cfg),
    )


def count_trainable(params: Any, adapt_cfg) -> tuple[int, int]:
    """(trainable, total) parameter counts of an (abstract or real) parameter tree."""
    labels = jax.tree.leaves(freeze_labels(params, adapt_cfg))
    sizes = [int(np.prod(x.shape)) for x in jax.tree.leaves(params)]
    return sum(s for s, lab in zip(sizes, labels, strict=True) if lab == "trainable"), sum(sizes)


def _checkpoint_dir(directory: str) -> str:
    sub = os.path.join(directory, "checkpoints")
    return sub if os.path.isdir(sub) else directory


def load_pretrained(params: Any, directory: str, adapt_cfg) -> tuple[Any, dict]:
    """`params` with the leaves `init_from` provides replaced (module docstring).

    Args:
      params: the fresh (sharded) parameter tree of this run.
      directory: `init_from`, a workdir or a checkpoints directory.
      adapt_cfg: the `adapt` block.

    Returns:
      (params, report) with report = {'loaded': [paths], 'initialised': [paths]}.
    """
    from train.checkpoint import load_state

    step = None if adapt_cfg.init_step < 0 else adapt_cfg.init_step
    source = load_state(_checkpoint_dir(directory), step)["params"]
    if adapt_cfg.method != "full":  # a plain checkpoint goes under base/
        source = {"base": source}
    flat = {path_str(p): v for p, v in jax.tree_util.tree_leaves_with_path(source)}
    wanted = re.compile(adapt_cfg.load)
    report: dict = {"loaded": [], "initialised": []}

    def take(path, leaf):
        name = path_str(path)
        if name in flat and wanted.fullmatch(name.removeprefix("base/")):
            value = np.asarray(flat[name])
            if value.shape != leaf.shape:
                raise ValueError(
                    f"init_from: {name} has shape {value.shape} in {directory} but "
                    f"{leaf.shape} here; exclude it with adapt.load"
                )
            report["loaded"].append(name)
            return jax.device_put(value.astype(leaf.dtype), leaf.sharding)
        report["initialised"].append(name)
        return leaf

    return jax.tree_util.tree_map_with_path(take, params), report


def _adapt_cfg(config):
    return config.get("adapt") or default_adapt_config()


def _active(config) -> bool:
    a = _adapt_cfg(config)
    return a.method != "full" or bool(a.freeze)


def recipe(config) -> Recipe | None:
    """The run's adaptation (train/recipe.py): an `AdaptedModel` and a freezing optimizer when
    `config.adapt` trains a subset, and `init_from` loaded before step 1; None for neither."""
    if "adapt" in config:
        check_fields(config.adapt, ADAPT_FIELDS, "adapt.")
    active, init = _active(config), bool(config.get("init_from", ""))
    if not (active or init):
        return None
    a = _adapt_cfg(config)
    return Recipe(
        name="adapt",
        model=(lambda run, m: AdaptedModel(m, a, run.tokenizer.vocab_size)) if active else None,
        optimizer=(lambda run, opt: freeze_optimizer(opt, a)) if active else None,
        init=(lambda run, state: load_init_from(state, config)) if init else None,
    )


def load_init_from(state, config):
    """`state` with parameters from `config.init_from` (unchanged when it is empty)."""
    directory = config.get("init_from", "")
    if not directory:
        return state
    params, report = load_pretrained(state.params, directory, _adapt_cfg(config))
    if not report["loaded"]:
        raise ValueError(f"init_from={directory!r}: no parameter matched adapt.load")
    new = [p for p in report["initialised"] if not p.startswith(("lora/", "prompt/"))]
    print(
        f"init_from {directory}: loaded {len(report['loaded'])} parameters"
        + (f"; initialised {new}" if new else "")
    )
    return state.replace(params=params)


def save_adapters(directory: str, params: dict) -> str:
    """Writes the trained non-base part of an adapted tree (LoRA or prompt) alone; returns path."""
    import orbax.checkpoint as ocp

    small = {k: v for k, v in params.items() if k != "base"}
    path = os.path.abspath(directory)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(path, jax.device_get(small), force=True)
    checkpointer.wait_until_finished()
    return path


def load_adapters(directory: str) -> dict:
    """Adapters written by `save_adapters`, as host arrays."""
    import orbax.checkpoint as ocp

    return ocp.StandardCheckpointer().restore(os.path.abspath(directory))
