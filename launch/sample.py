r"""Prints completions from a checkpoint: `python launch/sample.py --workdir DIR --prompt 'def '`.

Reads `DIR/config.json` (the run's resolved config) and the newest checkpoint in
`DIR/checkpoints` (or `--step`), merges LoRA adapters into the base weights if the run trained
them, and generates with the KV cache (models/generate.py). Decoder prompts are text; for an
encoder-decoder the prompt is the encoder input. Several `--prompt` flags form one batch.

  python launch/sample.py --workdir runs/gpt --prompt 'import os' --prompt 'def main(' \
      --max_new_tokens 64 --temperature 0.8 --top_p 0.95
"""

import os

from absl import app, flags, logging

_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory holding config.json and checkpoints."
)
_PROMPT = flags.DEFINE_multi_string("prompt", ["def "], "Prompt text (repeat for a batch).")
_STEP = flags.DEFINE_integer("step", -1, "Checkpoint step (-1: newest).")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 64, "Tokens to generate per prompt.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "0 is greedy.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Keep the k most likely tokens (0: all).")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus mass (1.0: all).")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_STOP_AT_EOS = flags.DEFINE_bool("stop_at_eos", True, "End a completion at the EOS id.")


def load_for_sampling(workdir: str, step: int = -1):
    """(params, model config, tokenizer) of a run, LoRA merged; raises on prompt-tuned runs."""

    from adapt import lora
    from data.pipeline import tokenizer_from_config
    from train.checkpoint import load_state
    from train.loop import read_run_config

    config = read_run_config(workdir)
    ckpt = os.path.join(workdir, "checkpoints")
    params = load_state(ckpt if os.path.isdir(ckpt) else workdir, None if step < 0 else step)
    params = params["params"]
    if "lora" in params:
        params = lora.merge(params["base"], params["lora"], config.adapt.lora)
    elif "prompt" in params:
        raise ValueError(
            f"{workdir} is a prompt-tuning run; sampling with soft prompts is not built"
        )
    tokenizer = tokenizer_from_config(config.data) if "data" in config else None
    return params, config.model, tokenizer


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # Orbax logs every file operation at INFO
    import jax

    from models.generate import SampleSettings, generate

    params, model_cfg, tokenizer = load_for_sampling(_WORKDIR.value, _STEP.value)
    family = model_cfg.get("family", "decoder")
    prompts = []
    for text in _PROMPT.value:
        ids = tokenizer.encode(text).tolist()
        prompts.append([tokenizer.bos_id, *ids] if family == "decoder" else ids)
    settings = SampleSettings(
        max_new_tokens=_MAX_NEW.value,
        temperature=_TEMPERATURE.value,
        top_k=_TOP_K.value,
        top_p=_TOP_P.value,
        stop_ids=(tokenizer.eos_id,) if _STOP_AT_EOS.value else (),
        pad_id=tokenizer.pad_id,
    )
    outs = generate(params, prompts, model_cfg, settings, jax.random.key(_SEED.value))
    for text, ids in zip(_PROMPT.value, outs, strict=True):
        ids = [t for t in ids if t != tokenizer.eos_id]
        print(f"--- prompt: {text!r}\n{text}{tokenizer.decode(ids)}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["workdir"])
    app.run(main)
