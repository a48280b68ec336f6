"""Config arithmetic shared by experiments: the base config and `key=value,...` argument parsing."""

import functools
from typing import NamedTuple

import ml_collections

from adapt.wrap import default_adapt_config
from compress import default_prune_config, default_quant_config
from data.config import default_data_config
from data.vocabulary import TRAINED_KINDS
from models.blocks import validate_attention_impl
from models.sizes import default_model_config
from objectives import default_objective_args
from parallel.mesh import default_parallel_config
from train.optim import default_train_config


def parse_arg(arg: str, choices: dict | None = None, **defaults) -> ml_collections.ConfigDict:
    """Parses 'size=small,runlocal' into a ConfigDict over `defaults` (bare words mean True).

    Values take the type of their default; unknown keys fail with the list of known ones, and a
    key of `choices` ({key: allowed values}) with a value not among them fails with the list.
    """
    out = ml_collections.ConfigDict(defaults)
    for item in filter(None, (s.strip() for s in (arg or "").split(","))):
        key, _, value = item.partition("=")
        if key not in defaults:
            raise ValueError(f"config argument {key!r} is unknown; known: {sorted(defaults)}")
        kind = type(defaults[key])
        if kind is bool:
            out[key] = value.lower() not in ("0", "false", "no") if value else True
        else:
            try:
                out[key] = kind(value)
            except ValueError as e:
                raise ValueError(
                    f"config argument {key}={value!r} must be a {kind.__name__}"
                ) from e
    for key, allowed in (choices or {}).items():
        if out[key] not in allowed:
            raise ValueError(f"{key}={out[key]!r} is unknown; choose one of {sorted(allowed)}")
    return out


def set_tokenizer(config: ml_collections.ConfigDict, tokenizer: str, vocab: int = 4096) -> None:
    """Points the data and model configs at a tokenizer (the `tokenizer=`/`vocab=` arguments).

    `tokenizer` is `byte`, `bpe` or `unigram` (a SentencePiece vocabulary of `vocab` ids trained on
    the training split on first use) or the path of a pretrained SentencePiece `.model` file. The
    model's embedding table is the vocabulary padded to a multiple of 128.
    """
    config.data.tokenizer = tokenizer
    if tokenizer == "byte":
        return
    if tokenizer.endswith(".model"):
        from data.spm import SentencePieceTokenizer  # only experiments that name a file load one

        sentinels = config.data.num_sentinels
        vocab = SentencePieceTokenizer(tokenizer, num_sentinels=sentinels).vocab_size
    elif tokenizer not in TRAINED_KINDS:
        raise ValueError(
            f"tokenizer={tokenizer!r} is unknown; use byte, bpe, unigram or a path to a .model file"
        )
    config.data.vocab_size = vocab
    config.model.vocab_size = -(-vocab // 128) * 128


def set_schedule(config: ml_collections.ConfigDict, steps: int, lr: float, warmup: int) -> None:
    """The single-run schedule of the experiments: warmup capped at 10% of the steps, five evals
    and five checkpoints over the run, a log line every 10 steps."""
    config.train.steps = steps
    config.train.lr = lr
    config.train.warmup_steps = min(warmup, steps // 10)
    config.train.eval_every = max(steps // 5, 1)
    config.train.ckpt_every = max(steps // 5, 1)
    config.train.log_every = 10


class Plan(NamedTuple):
    """Where an accelerator preset runs and how it is split (`set_accelerator`'s settings).

    target: the slice it is planned for (a SLICE of aot/slices.py: 'v5p-64', '8xh100', ...).
    mesh: parallel.mesh sizes over the default {'data': 1, 'stage': 1, 'fsdp': -1, 'tensor': 1}.
    grad_accum: microbatches per optimizer step (what keeps activations within HBM).
    remat: the rematerialisation policy of each layer (models.blocks.REMAT_POLICIES).
    attn_logits_dtype: dtype of the attention logits and softmax (bf16 only if memory demands).
    """

    target: str
    mesh: dict | None = None
    grad_accum: int = 1
    remat: str = "full"
    attn_logits_dtype: str = "float32"


def set_accelerator(config: ml_collections.ConfigDict, plan: Plan, target: str = "") -> None:
    """Settings of a run on a TPU slice or GPU nodes, split as `plan` says; a `target` SLICE
    replaces the plan's (the peak FLOP/s are then that chip's, the split stays the plan's).

    Layers under `lax.scan` (compiles once per layer, not per layer index), the plan's remat on
    every layer, bf16 activations and matmuls with f32 parameters and optimizer state, f32 loss,
    the platform's fused attention kernel (`splash` on TPU, `cudnn` on GPU; `xla` where the
    architecture needs a bias). `train.peak_flops` is the target chip's dense bf16 peak (so MFU
    is against the vendor figure, not a measured matmul). The mesh is FSDP over every chip
    (`fsdp=-1`, `data=1`) with the plan's mesh overriding axes.
    """
    from aot.slices import parse_slice  # chip figures only; nothing here touches a device

    chip = parse_slice(target or plan.target).chip
    m = config.model
    m.layer_loop = "scan"
    m.remat = plan.remat
    m.dtype = "bfloat16"
    m.attn_logits_dtype = plan.attn_logits_dtype
    m.loss_dtype = "float32"
    # The fused kernel of the platform (no [B, N, T, S] logits in HBM), unless the architecture
    # needs what no kernel computes (T5's per-head relative bias, attention dropout).
    m.attention_impl = "splash" if chip.platform == "tpu" else "cudnn"
    try:
        validate_attention_impl(m)
    except ValueError:
        m.attention_impl = "xla"
    config.train.peak_flops = chip.peak_flops
    config.train.grad_accum = plan.grad_accum
    config.parallel.mesh = {"data": 1, "stage": 1, "fsdp": -1, "tensor": 1} | (plan.mesh or {})
    config.parallel.rules = "fsdp_tp"


# Experiments with accelerator presets; each has `presets()` -> [(config argument, slice), ...].
PRESET_EXPERIMENTS = ("gpt", "gpt3", "llama", "t5", "bert")


def accelerator_presets() -> list[tuple[str, str, str]]:
    """Every accelerator preset as (experiment file, config argument, planned slice), e.g.
    ('experiments/llama.py', 'size=8b,target=8xh100', '8xh100'); docs/presets.py compiles them."""
    import importlib

    out = []
    for name in PRESET_EXPERIMENTS:
        module = importlib.import_module(f"experiments.{name}")
        out += [(f"experiments/{name}.py", arg, slice_) for arg, slice_ in module.presets()]
    return out


def set_runlocal(config: ml_collections.ConfigDict) -> None:
    """The `runlocal` argument: 20 steps of 8 rows with two evals and checkpoints (a smoke test)."""
    config.train.steps = 20
    config.train.warmup_steps = 2
    config.train.eval_every = 10
    config.train.ckpt_every = 10
    config.train.eval_batches = 2
    config.data.batch_size = 8


TASK_PHASES = ("study", "pretrain", "finetune", "scratch")


def task_phase(
    pretrain: ml_collections.ConfigDict, args: ml_collections.ConfigDict, set_task
) -> ml_collections.ConfigDict:
    """One phase of a pre-train -> fine-tune experiment (experiments/classify.py, seq2seq.py).

    `args.phase` 'study' is every phase as one study (studies/finetune.py: the `pretrain` config
    with the experiment's arguments in a `study` block); 'pretrain' is the `pretrain` config as it
    is; 'finetune' and 'scratch' are `task_run`'s.
    """
    if args.phase in ("study", "pretrain") and args.runlocal:
        set_runlocal(pretrain)
    if args.phase == "pretrain":
        return pretrain
    if args.phase == "study":
        pretrain.kind = "study"
        pretrain.study = {k: v for k, v in args.items() if k not in ("phase", "base")}
        return pretrain
    return task_run(pretrain, args, args.phase, args.base, set_task)


def task_run(pretrain, args, phase: str, base: str, set_task) -> ml_collections.ConfigDict:
    """The task run of `phase`: 'finetune' from the weights of `base` (a pre-training workdir),
    'scratch' from random weights (the control). `set_task(config, args)` turns the pre-training
    config into the task's; the task trains `args.steps` steps at `args.lr` and evaluates on the
    whole held-out split."""
    config = pretrain.copy_and_resolve_references()
    if phase == "finetune":
        if not base:
            raise ValueError("phase=finetune needs base=<pre-training workdir>")
        config.init_from = base  # new heads keep their initialisation
    set_task(config, args)
    set_schedule(config, args.steps, args.lr, args.steps // 10)
    config.train.eval_batches = 1000  # the whole held-out split (fewer batches if smaller)
    if args.runlocal:
        set_runlocal(config)
        config.train.eval_batches = 2
    return config


def task_experiment(pretrain_config, set_task, **defaults):
    """`(get_config, get_stages)` of a pre-train -> task experiment (classify.py, seq2seq.py):
    `pretrain_config` is the pre-training experiment's get_config, `defaults` the arguments
    beyond phase, base, size, scratch and runlocal (with steps, pre_steps and lr)."""

    def get_config(arg: str = ""):
        args = parse_arg(
            arg,
            {"phase": TASK_PHASES},
            phase="study",
            base="",
            size="tiny",
            scratch=True,
            runlocal=False,
            **defaults,
        )
        pretrain = pretrain_config(f"size={args.size},steps={args.pre_steps}")
        return task_phase(pretrain, args, set_task)

    def get_stages(config, workdir: str):
        from studies import finetune

        return finetune.stages(config, workdir, functools.partial(task_run, set_task=set_task))

    return get_config, get_stages


def base_config(size: str = "small") -> ml_collections.ConfigDict:
    """Every field a single run reads, with defaults; experiments override what they study."""
    config = ml_collections.ConfigDict()
    # What launch/run.py does with the config: 'train' one run, 'sweep' a grid of runs and the
    # fit (studies/sweep.py), 'study' the stages of a multi-stage study (studies/stages.py).
    config.kind = "train"
    config.seed = 0
    config.objective = "causal_lm"  # see the table in objectives/__init__.py
    config.objective_args = default_objective_args()  # masking / span-corruption settings
    config.model = default_model_config(size)
    config.data = default_data_config()
    config.train = default_train_config()
    # Adapting a checkpoint (adapt/wrap.py): a run's workdir to load parameters from ('' =
    # train from scratch) and the method (full / lora / prompt), what to load and to freeze.
    config.init_from = ""
    config.adapt = default_adapt_config()
    # Quantization-aware training and pruning during training (compress/__init__.py); 0 = off.
    config.quant = default_quant_config()
    config.prune = default_prune_config()
    config.parallel = default_parallel_config()  # mesh, rule table, pipeline schedule
    return config
