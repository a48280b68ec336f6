"""Input validation that runs before anything compiles or writes: config, data and workdir.

Every check raises `ConfigError` with one line that starts with the field it is about and says what
to do (`launch/run.py` prints it as `error: <line>` and exits 2). Nothing here writes a file or
creates a directory: a rejected run leaves its workdir exactly as it was.

Every field of a run config is declared once, next to its block's default (models/sizes.py,
data/config.py, train/optim.py, objectives/__init__.py, adapt/wrap.py, parallel/mesh.py;
`config_fields` gathers them) with its type, range and allowed values, and `check_fields` walks
them all; rules across fields and blocks (divisibility by mesh axes, the pipeline) follow.

Known names (model families, objectives, rule tables, tokenizers, datasets) come from their
registries (`models.get_model`, `objectives.get_loss_fn`, `parallel.rules.get_rules`, TFDS), so a
family or objective another module adds is accepted without touching this file.
"""

import glob as globlib
import json
import math
import os
import tempfile
import uuid

import ml_collections


class ConfigError(ValueError):
    """Bad input found before anything compiled or was written; `launch/run.py` exits 2."""


def _one_line(e: BaseException) -> str:
    """The first line of an exception's message (registries list their choices on later lines)."""
    text = str(e).strip().strip("'\"")
    return text.splitlines()[0] if text else type(e).__name__


def _registry_check(fn, *args) -> None:
    try:
        fn(*args)
    except (ValueError, KeyError) as e:
        raise ConfigError(_one_line(e)) from e


def config_fields() -> dict:
    """The declared fields of a run config (experiments/common.py `base_config`), block by block.

    Each block's fields are declared next to its default config; the top-level fields
    `base_config` sets itself are declared here. Top-level blocks not listed (`adapt`, `quant`,
    `prune`, an experiment's `sweep`, `distill`, `dpo`) belong to the feature that reads them,
    which checks them when the run's recipe is composed (studies/recipes.py).
    """
    from data.config import DATA_FIELDS
    from models.sizes import MODEL_FIELDS
    from objectives import OBJECTIVE_ARGS_FIELDS
    from parallel.mesh import PARALLEL_FIELDS
    from train.optim import TRAIN_FIELDS

    return {
        "kind": {"choices": ("train", "sweep", "study")},
        "seed": {"type": int, "min": 0},
        "objective": {"type": str},  # a registry name: objectives.get_loss_fn
        "objective_args": OBJECTIVE_ARGS_FIELDS,
        "model": MODEL_FIELDS,
        "data": DATA_FIELDS,
        "train": TRAIN_FIELDS,
        "init_from": {"type": str},  # '' or a run's workdir: check_init_from reads it
        "parallel": PARALLEL_FIELDS,
    }


_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _is_field(spec: dict) -> bool:
    return "type" in spec or "choices" in spec


def _has_type(value, kind) -> bool:
    if kind is float:  # an integer is a number; a bool is not
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is tuple:
        return isinstance(value, (tuple, list))
    return isinstance(value, kind)


def _bound(bound, block, prefix: str) -> tuple[object, str]:
    """A bound's value and how to name it: a number, or the name of a sibling field."""
    if isinstance(bound, str):
        return block[bound], f"{prefix}{bound}={block[bound]}"
    return bound, f"{bound}"


def _check_value(path: str, value, spec: dict, block, prefix: str) -> None:
    shown = f"{path}={value!r}"
    if "choices" in spec:
        choices = tuple(spec["choices"])
        if not any(value == c and type(value) is type(c) for c in choices):
            raise ConfigError(f"{shown} is not allowed; choose one of {choices}")
    kind = spec.get("type")
    if kind is not None and not _has_type(value, kind):
        raise ConfigError(f"{shown} must be {_TYPE_NAMES.get(kind, 'a list')}; pass one")
    if kind is float and not math.isfinite(value):
        raise ConfigError(f"{shown} must be a finite number")
    if "items" in spec:
        for i, item in enumerate(value):
            _check_value(f"{path}[{i}]", item, spec["items"], block, prefix)
    for key, test, words in (
        ("min", lambda v, b: v >= b, "at least"),
        ("max", lambda v, b: v <= b, "at most"),
        ("above", lambda v, b: v > b, "above"),
        ("below", lambda v, b: v < b, "below"),
    ):
        if key in spec:
            bound, named = _bound(spec[key], block, prefix)
            if not test(value, bound):
                raise ConfigError(f"{shown} must be {words} {named}; change it")
    if "not" in spec and value == spec["not"]:
        raise ConfigError(f"{shown} is not allowed (use any other value in range)")


def check_fields(block, fields: dict, prefix: str = "") -> None:
    """Every declared field of `block` has its declared type, range and allowed values.

    Args:
      block: a config block (a ConfigDict or dict).
      fields: its declaration (`config_fields()` for a whole run config): field name -> spec
        with `type` (int, float, bool, str, tuple), `choices`, inclusive `min` / `max`,
        exclusive `above` / `below` (a bound may name a sibling field), `not` (an excluded
        value), `items` (the spec of each item of a tuple) and `check(block)` (raises ValueError
        for rules across fields); or a nested block's declaration.
      prefix: the block's dotted path ('model.').

    Raises:
      ConfigError: one line naming the first bad field (in declaration order) and the fix.
    """
    for name in block:
        if prefix and name not in fields:
            raise ConfigError(
                f"{prefix}{name} is not a declared config field; declare it with its type and "
                "range next to the block's default config"
            )
    for name, spec in fields.items():
        path = f"{prefix}{name}"
        if name not in block:
            raise ConfigError(f"{path} is missing; start from experiments/common.base_config")
        value = block[name]
        if not _is_field(spec):
            if not isinstance(value, (dict, ml_collections.ConfigDict)):
                raise ConfigError(f"{path}={value!r} must be a block of fields")
            check_fields(value, spec, f"{path}.")
            continue
        _check_value(path, value, spec, block, prefix)
        if "check" in spec:
            try:
                spec["check"](block)
            except ValueError as e:
                line = _one_line(e)
                root = path.split(".")[0] + "."
                message = line if line.startswith(root) else f"{path}={value!r}: {line}"
                raise ConfigError(message) from e


def _axis_size(rules, logical: str, mesh: dict[str, int]) -> tuple[tuple[str, ...], int]:
    """The mesh axes `logical` maps to under `rules` (first matching rule) and their product."""
    for name, axes in rules:
        if name == logical:
            axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
            return axes, math.prod(mesh[a] for a in axes)
    return (), 1


def check_config(config, n_devices: int | None = None) -> None:
    """Config-only checks (no files): every declared field, names, and the sizes a mesh axis
    must divide.

    Args:
      config: the run config (`experiments/common.base_config` fields).
      n_devices: global device count for the mesh check (None: `jax.device_count()`).

    Raises:
      ConfigError: naming the first bad field and the fix.
    """
    import inspect

    import jax

    import objectives
    from models import get_model
    from models.sizes import resolved_dims
    from parallel.mesh import AXES, mesh_shape
    from parallel.pipeline import check_pipeline_config
    from parallel.rules import get_rules
    from parallel.sharding import batch_spec
    from train.optim import make_schedule

    check_fields(config, config_fields())
    m, d, t = config.model, config.data, config.train
    _registry_check(get_model, m.family)
    _registry_check(objectives.get_loss_fn, config.objective)
    from data import tasks

    _registry_check(tasks.check, config)  # data.task and the objective it trains
    _registry_check(make_schedule, t)
    try:
        resolved_dims(m)
    except ValueError as e:
        raise ConfigError(_one_line(e)) from e
    if m.positions == "learned" and d.seq_len > m.max_len:
        raise ConfigError(
            f"data.seq_len={d.seq_len} exceeds model.max_len={m.max_len} (learned position "
            "table); raise model.max_len or lower data.seq_len"
        )
    if d.batch_size % t.grad_accum:
        raise ConfigError(
            f"train.grad_accum={t.grad_accum} does not divide data.batch_size={d.batch_size}; "
            "choose a divisor of the batch as the number of microbatches"
        )

    try:
        sizes = mesh_shape(
            config.parallel.mesh, jax.device_count() if n_devices is None else n_devices
        )
    except ValueError as e:
        raise ConfigError(_one_line(e)) from e
    mesh = dict(zip(AXES, sizes, strict=True))
    if m.n_layers % mesh["stage"]:
        raise ConfigError(
            f"model.n_layers={m.n_layers} is not divisible by parallel.mesh.stage="
            f"{mesh['stage']}; every pipeline stage needs the same number of layers"
        )
    _registry_check(get_rules, config.parallel.rules)
    rules = get_rules(config.parallel.rules, pipeline=mesh["stage"] > 1)
    if mesh["stage"] > 1:
        if "layer_stack" not in inspect.signature(get_model(m.family).apply).parameters:
            raise ConfigError(
                f"model.family={m.family!r} cannot be pipelined (no layer_stack hook); set "
                "parallel.mesh.stage=1"
            )
        _registry_check(check_pipeline_config, config, mesh, rules)
    n_heads = m.n_heads
    dims = (
        ("heads", "model.n_heads", n_heads),
        ("kv_heads", "model.n_kv_heads", m.n_kv_heads or n_heads),
        ("mlp", "model.d_ff", m.d_ff),
        ("vocab", "model.vocab_size", m.vocab_size),
        ("embed", "model.d_model", m.d_model),
    )
    for logical, field, size in dims:
        axes, n = _axis_size(rules, logical, mesh)
        if size % n:
            names = " x ".join(f"parallel.mesh.{a}={mesh[a]}" for a in axes)
            raise ConfigError(
                f"{field}={size} is not divisible by {names} (parallel.rules="
                f"{config.parallel.rules!r} shards {logical} over it); change one of them"
            )
    spec = batch_spec(rules)[0]
    axes = () if spec is None else (spec,) if isinstance(spec, str) else tuple(spec)
    n = math.prod(mesh[a] for a in axes)
    rows = d.batch_size // t.grad_accum
    if rows % n:
        per = f" / train.grad_accum={t.grad_accum} = {rows} rows" if t.grad_accum > 1 else ""
        names = " x ".join(f"parallel.mesh.{a}={mesh[a]}" for a in axes)
        raise ConfigError(
            f"data.batch_size={d.batch_size}{per} is not divisible by {names}; change "
            "data.batch_size, train.grad_accum or parallel.mesh"
        )
    _check_model_traces(config)


def _check_model_traces(config) -> None:
    """Traces (never compiles) the model's init, which checks every family-specific field."""
    import jax

    from models import get_model

    model = get_model(config.model.family)
    try:
        # The key is made inside: an eager `jax.random.key(0)` would compile a program.
        jax.eval_shape(lambda: model.init(jax.random.key(0), config.model))
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(_one_line(e)) from e


def _check_tokenizer(data_cfg) -> None:
    from data.tokenizer import get_tokenizer
    from data.vocabulary import TRAINED_KINDS

    name = data_cfg.tokenizer
    if name.endswith(".model"):
        path = os.path.abspath(os.path.expanduser(name))
        if not os.path.isfile(path) or not os.access(path, os.R_OK):
            raise ConfigError(
                f"data.tokenizer={name!r}: no readable SentencePiece model file there; fix the "
                "path or use byte, bpe or unigram"
            )
    elif name not in TRAINED_KINDS:
        try:
            get_tokenizer(name, num_sentinels=data_cfg.num_sentinels)
        except ValueError as e:
            raise ConfigError(
                f"data.tokenizer={name!r} is unknown; use byte, {', '.join(TRAINED_KINDS)} or the "
                "path of a .model file"
            ) from e


def _check_catalog(data_cfg) -> None:
    import tensorflow_datasets as tfds

    from data.corpus import resolve_data_dir

    name = data_cfg.dataset
    try:
        tfds.builder_cls(name.split("/")[0].split(":")[0])
    except ValueError as e:  # tfds' DatasetNotFoundError is a ValueError
        raise ConfigError(
            f"data.dataset={name!r} is neither 'stdlib' nor a TFDS catalog name; fix the name or "
            "set data.glob to local text files"
        ) from e
    data_dir = resolve_data_dir(data_cfg)
    if "://" not in data_dir and not tfds.builder(name, data_dir=data_dir).data_path.exists():
        raise ConfigError(
            f"data.dataset={name!r} is not prepared under data.data_dir={data_dir!r}; build it "
            f"there (tfds build {name} --data_dir={data_dir}) or point data.data_dir at it"
        )


def _check_glob(data_cfg) -> None:
    """A user glob must match readable, non-empty text; read only while its dataset is unbuilt."""
    from data import cleaning, corpus

    config = corpus.make_builder_config(
        data_cfg.glob, data_cfg.val_fraction, cleaning.from_config(data_cfg)
    )
    data_dir = corpus.resolve_data_dir(data_cfg)
    built = os.path.join(data_dir, "scalelab_text_files", config.name)
    if os.path.isdir(built) and any(not n.startswith(".") for n in os.listdir(built)):
        return  # built before: the files are not read again
    field = f"data.glob={data_cfg.glob!r}"
    matched = [p for p in globlib.glob(config.pattern, recursive=True) if not os.path.isdir(p)]
    if not matched:
        root = os.path.dirname(config.pattern.split("*")[0]) or "/"
        why = "its directory does not exist" if not os.path.isdir(root) else "nothing matches"
        raise ConfigError(
            f"{field} matches no files ({why}); fix the pattern (a recursive glob looks like "
            "'/path/**/*.txt')"
        )
    total = not_utf8 = 0
    first_bad = ""
    for path in sorted(matched):
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except OSError as e:
            raise ConfigError(
                f"{field}: cannot read {path} ({e.strerror or e}); fix it or narrow the glob"
            ) from e
        total += len(raw.strip())
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            not_utf8 += 1
            first_bad = first_bad or path
    if total == 0:
        raise ConfigError(
            f"{field} matches {len(matched)} file(s) holding no text; point it at non-empty files"
        )
    utf8_filter = "utf8" in tuple(data_cfg.filters.enabled)
    if not_utf8 == len(matched) or (not_utf8 and not utf8_filter):
        raise ConfigError(
            f"{field}: {not_utf8} of {len(matched)} files are not UTF-8 text (first: {first_bad}); "
            "re-encode them as UTF-8 or narrow the glob"
        )


def check_data(data_cfg) -> None:
    """The tokenizer, and the corpus a data config names, without building or writing anything.

    Raises:
      ConfigError: unknown tokenizer or dataset; a glob that matches nothing, an unreadable, empty
        or non-UTF-8 corpus.
    """
    _check_tokenizer(data_cfg)
    if data_cfg.glob:
        _check_glob(data_cfg)
    elif data_cfg.dataset != "stdlib":
        _check_catalog(data_cfg)


def _nearest_existing(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def check_workdir(workdir: str, config, what: str = "run") -> None:
    """`workdir` can be written and holds nothing but (perhaps) an earlier run of this very config.

    The config is compared first (reading only); writability is then probed with a temporary
    file in the nearest existing directory (remote workdir: a temporary object in the workdir),
    removed at once.

    Raises:
      ConfigError: not writable, not a directory, or holding a `what` of another config.
    """
    from common import atomic

    field = f"--workdir={workdir}"
    remote = atomic.is_remote(workdir)
    try:
        is_file = atomic.exists(workdir) and not atomic.isdir(workdir)
    except (NotImplementedError, ImportError, ValueError, KeyError) as e:
        raise ConfigError(
            f"{field}: this location cannot be opened ({_one_line(e)}); pass a local directory "
            "or a gs:// URL (with gcsfs installed)"
        ) from e
    except OSError as e:
        raise ConfigError(
            f"{field} cannot be read ({e.strerror or _one_line(e)}); check the bucket and its "
            "permissions or pass another --workdir"
        ) from e
    if is_file:
        raise ConfigError(f"{field} is a file, not a directory; pass another --workdir")
    config_path = os.path.join(workdir, "config.json")
    if atomic.exists(config_path):
        try:
            saved = json.loads(atomic.read_text(config_path))
        except (OSError, ValueError) as e:
            raise ConfigError(
                f"{field}: {config_path} is unreadable ({_one_line(e)}); move it away or pass "
                "another --workdir"
            ) from e
        if saved != json.loads(json.dumps(config.to_dict())):
            changed = sorted(_diff(saved, json.loads(json.dumps(config.to_dict()))))
            raise ConfigError(
                f"{field} holds a {what} of a different config (differs in "
                f"{', '.join(changed[:3])}{', ...' if len(changed) > 3 else ''}); pass another "
                "--workdir (or delete it to start over)"
            )
    if remote:
        probe = os.path.join(workdir, f".scalelab-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            atomic.write_bytes(probe, b"")
            atomic.remove(probe)
        except Exception as e:  # fsspec clients raise their own errors (auth, missing bucket)
            raise ConfigError(
                f"{field} is not writable ({_one_line(e)}); check the bucket and its permissions "
                "or pass another --workdir"
            ) from e
        return
    base = _nearest_existing(workdir)
    if not os.path.isdir(base):
        raise ConfigError(
            f"{field}: {base} is a file, so the directory cannot be made; pass another --workdir"
        )
    try:
        fd, probe = tempfile.mkstemp(dir=base, prefix=".scalelab-probe-")
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise ConfigError(
            f"{field} is not writable ({base}: {e.strerror or e}); pass a writable --workdir"
        ) from e


def check_shared(
    workdir: str,
    data_cfg,
    *,
    shared_workdir: bool = False,
    shared_data_dir: bool = False,
    process_count: int | None = None,
) -> None:
    """With several processes (hosts), the directories every host must see as one.

    On a multi-host slice Orbax writes each host's shards into one checkpoint directory and the
    primary host commits it, and only process 0 writes config.json and metrics; so a local
    `--workdir` (a different disk on every host) is refused unless `shared_workdir` says it is a
    mount all hosts share (NFS). The same holds for `data.data_dir` when it holds a catalog
    dataset (lm1b, c4): each host reads its rows from it, and a dataset prepared on one host's disk
    is missing (or different) on the others; `shared_data_dir` says it is shared (or the same
    prepared copy on every host). A local corpus (the stdlib or `data.glob`) is built
    deterministically on each host from that host's files, so a local data_dir is fine for it (a
    glob must match the same files on every host).

    Args:
      workdir: the run (or sweep) directory.
      data_cfg: the data config (None: the run reads no data of its own, e.g. a study over a
        trained run).
      shared_workdir: a local `workdir` is a mount every host sees.
      shared_data_dir: a local `data.data_dir` is shared, or prepared identically on every host.
      process_count: number of processes (None: `jax.process_count()`).

    Raises:
      ConfigError: one line naming the flag and the fix.
    """
    from common import atomic
    from data.corpus import is_local, resolve_data_dir

    if process_count is None:
        import jax

        process_count = jax.process_count()
    if process_count <= 1:
        return
    if not atomic.is_remote(workdir) and not shared_workdir:
        raise ConfigError(
            f"--workdir={workdir} is a local directory, but {process_count} processes (hosts) "
            "must write one shared workdir; pass --workdir=gs://BUCKET/..., or add "
            "--shared_workdir if it is a mount every host sees (NFS)"
        )
    if data_cfg is None:
        return
    data_dir = resolve_data_dir(data_cfg)
    if not is_local(data_cfg) and not atomic.is_remote(data_dir) and not shared_data_dir:
        raise ConfigError(
            f"data.data_dir={data_dir!r} is a local directory, but {process_count} processes "
            f"(hosts) read data.dataset={data_cfg.dataset!r} from it; set "
            "--config.data.data_dir=gs://BUCKET/tfds, or add --shared_data_dir if every host "
            "sees the same prepared copy there"
        )


def _diff(a, b, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts."""
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return [prefix or "(root)"] if a != b else []
    out = []
    for k in sorted(set(a) | set(b)):
        out += _diff(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else k)
    return out


def check_vocab(config) -> None:
    """The model's embedding table holds every id the tokenizer can produce."""
    from data.tokenizer import get_tokenizer
    from data.vocabulary import TRAINED_KINDS

    name, d = config.data.tokenizer, config.data
    if name in TRAINED_KINDS:
        n = d.vocab_size
    elif name.endswith(".model"):
        return  # known once the file is loaded (Run checks it)
    else:
        n = get_tokenizer(name, num_sentinels=d.num_sentinels).vocab_size
    if n > config.model.vocab_size:
        raise ConfigError(
            f"model.vocab_size={config.model.vocab_size} is smaller than the {name} tokenizer's "
            f"{n} ids; raise model.vocab_size (a multiple of 128 is fastest)"
        )


def check_init_from(config) -> None:
    """`init_from` ('' or a run's workdir / checkpoints directory) holds the step to load."""
    directory = config.init_from
    if not directory:
        return
    from train.checkpoint import Checkpointer

    field = f"init_from={directory!r}"
    if not os.path.isdir(directory):
        raise ConfigError(
            f"{field} is not a directory; pass a run's workdir (or its checkpoints directory)"
        )
    sub = os.path.join(directory, "checkpoints")
    steps = Checkpointer(sub if os.path.isdir(sub) else directory, read_only=True)
    steps = steps.manager.all_steps()
    if not steps:
        raise ConfigError(f"{field} holds no checkpoint; pass the workdir of a run that saved one")
    step = config.adapt.init_step
    if step >= 0 and step not in steps:
        raise ConfigError(
            f"adapt.init_step={step} is not a checkpoint of {field} (it has {sorted(steps)}); "
            "pick one of them or -1 for the newest"
        )


def check_run(config, workdir: str, what: str = "run") -> None:
    """Every check a run (or sweep, or study) needs before it builds anything: config, data,
    workdir. A sweep's points and a study's stages are checked by their runners."""
    single = config.get("kind", "train") == "train"
    if single:
        check_config(config)
        check_init_from(config)
    if "data" in config:  # a study over another run's checkpoint reads that run's data
        check_data(config.data)
    if single:
        check_vocab(config)
    check_workdir(workdir, config, what)
