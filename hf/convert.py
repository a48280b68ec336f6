"""Hugging Face checkpoints <-> this codebase: one entry point over the per-family converters.

`load_hf(dir)` reads a Hugging Face model directory (config.json + safetensors or
pytorch_model.bin) and returns our model config and parameters; `save_hf(dir, cfg, params)` writes
the inverse. Supported: GPT-2 (decoder), BERT (encoder), T5 v1.0 and v1.1 (encoder-decoder).
"""

from types import ModuleType

import numpy as np

from hf.files import read_hf_config, read_weights, write_hf_dir


def _converters() -> dict[str, ModuleType]:
    from hf import bert as hf_bert
    from hf import gpt2 as hf_gpt2
    from hf import t5 as hf_t5

    return {m.MODEL_TYPE: m for m in [hf_gpt2, hf_bert, hf_t5]}


def converter(model_type: str) -> ModuleType:
    """The converter module for a Hugging Face `model_type` (e.g. 'gpt2')."""
    table = _converters()
    if model_type not in table:
        raise ValueError(
            f"Hugging Face model_type={model_type!r} is not supported; "
            f"choose one of {sorted(table)}"
        )
    return table[model_type]


def converter_for(cfg) -> ModuleType:
    """The converter that exports our model config `cfg` (by its family)."""
    for module in _converters().values():
        if cfg.family in module.FAMILIES:
            return module
    raise ValueError(f"model.family={cfg.family!r} has no Hugging Face export")


def from_hf(hf_config: dict, state: dict[str, np.ndarray]):
    """(our model config, our parameters as numpy arrays) from a config dict and a state dict."""
    module = converter(hf_config.get("model_type", ""))
    cfg = module.config_from_hf(hf_config, state)
    params = module.params_from_hf(state, cfg)
    return cfg, params


def to_hf(cfg, params) -> tuple[dict, dict[str, np.ndarray]]:
    """(Hugging Face config dict, state dict) of our model config and parameters."""
    module = converter_for(cfg)
    params = _to_numpy(params)
    hf_config = module.config_to_hf(cfg)
    hf_config["dtype"] = str(params["embed"].dtype)  # what the weights are stored in
    return hf_config, module.params_to_hf(params, cfg)


def load_hf(hf_dir: str):
    """(our model config, parameters) of the Hugging Face model directory `hf_dir`."""
    hf_config = read_hf_config(hf_dir)
    converter(hf_config.get("model_type", ""))  # an unsupported model fails before reading weights
    return from_hf(hf_config, read_weights(hf_dir))


def save_hf(hf_dir: str, cfg, params) -> None:
    """Writes our model as a Hugging Face directory (config.json + model.safetensors)."""
    write_hf_dir(hf_dir, *to_hf(cfg, params))


def _to_numpy(tree):
    if isinstance(tree, dict):
        return {k: _to_numpy(v) for k, v in tree.items()}
    return np.asarray(tree)
