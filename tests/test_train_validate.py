"""Bad input: each case exits 2 with one line naming the field, before anything compiles or trains,
leaving the workdir as it was; every declared config field rejects a value outside its declaration.

Most cases run the real command line in-process (`launch.run.cli`, the function `python
launch/run.py` calls, with a fresh set of flags), since a subprocess per case would add only the
interpreter's start-up; a few run as real subprocesses, in parallel, for the exit code itself.
"""

import contextlib
import io
import json
import os
import subprocess
import sys

import jax
import ml_collections
import pytest

from experiments.common import base_config
from launch import run as run_cli
from studies.recipes import config_fields
from tests.helpers import make_corpus
from train.validate import ConfigError, check_config, check_fields

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A corpus, data dir, and odd corpora for the data cases."""
    import train.loop  # noqa: F401  (a process imports the stack once; time the checks alone)

    tmp = tmp_path_factory.mktemp("validate")
    glob = make_corpus(str(tmp / "corpus"), n_files=8)
    (tmp / "empty").mkdir()
    for i in range(3):
        (tmp / "empty" / f"{i}.txt").write_bytes(b"")
    (tmp / "binary").mkdir()
    for i in range(3):
        (tmp / "binary" / f"{i}.bin").write_bytes(bytes(range(128, 256)) * 4)
    (tmp / "dangling").mkdir()
    (tmp / "dangling" / "a.txt").write_text("some text\n")
    os.symlink(tmp / "nowhere.txt", tmp / "dangling" / "b.txt")
    (tmp / "afile").write_text("not a directory")
    (tmp / "other").mkdir()
    (tmp / "other" / "config.json").write_text(json.dumps({"seed": 1, "model": {}}))
    (tmp / "nodata").mkdir()
    return tmp, glob


def _base(tmp, glob) -> list[str]:
    return [
        "run.py",
        "--config=experiments/gpt.py:size=tiny,runlocal",
        f"--config.data.glob={glob}",
        f"--config.data.data_dir={tmp}/tfds",
        "--config.train.grad_accum=1",  # 8 rows over the 8 simulated devices
        "--compile_cache=",
    ]


ALONE = "<alone>"  # a case's marker: the command line is its arguments and --workdir only

# (case, extra arguments, text the error line must contain); {tmp} is the fixture's directory.
CASES = [
    ("unknown key", ["--config.train.stepz=5"], "train.stepz"),
    ("unknown nested key", ["--config.model.n_head=4"], "model.n_head"),
    ("wrong type int", ["--config.train.steps=abc"], "train.steps"),
    ("wrong type float", ["--config.train.lr=fast"], "train.lr"),
    ("unknown experiment argument", ["--config=experiments/gpt.py:size=tiny,stepz=3"], "stepz"),
    ("wrong type experiment argument", ["--config=experiments/gpt.py:steps=many"], "steps"),
    ("unknown size", ["--config=experiments/gpt.py:size=huge"], "model.size"),
    ("missing experiment file", ["--config=experiments/nosuch.py"], "--config"),
    ("non-positive steps", ["--config.train.steps=0"], "train.steps"),
    ("heads vs d_model", ["--config.model.n_heads=3"], "model.n_heads"),
    ("heads vs kv heads", ["--config.model.n_kv_heads=3"], "model.n_kv_heads"),
    (
        "heads vs tensor axis",
        ["--config.parallel.mesh.data=1", "--config.parallel.mesh.tensor=8"],
        "model.n_heads=4 is not divisible by parallel.mesh.tensor=8",
    ),
    (
        "d_ff vs tensor axis",
        [
            "--config.parallel.mesh.data=1",
            "--config.parallel.mesh.tensor=8",
            "--config.model.n_heads=8",
            "--config.model.d_ff=100",
        ],
        "model.d_ff=100",
    ),
    ("batch vs data x fsdp", ["--config.data.batch_size=12"], "data.batch_size=12"),
    ("layers vs stages", ["--config.parallel.mesh.stage=4"], "parallel.mesh.stage=4"),
    ("microbatches vs batch", ["--config.train.grad_accum=3"], "train.grad_accum=3"),
    ("mesh product vs devices", ["--config.parallel.mesh.data=3"], "parallel.mesh"),
    ("unknown rule table", ["--config.parallel.rules=zero"], "parallel.rules"),
    (
        "seq_len beyond the position table",
        ["--config.model.positions=learned", "--config.model.max_len=64"],
        "data.seq_len=128",
    ),
    ("unknown family", ["--config.model.family=rnn"], "model.family"),
    ("unknown objective", ["--config.objective=contrastive"], "objective"),
    ("unknown nan policy", ["--config.train.nan_policy=ignore"], "train.nan_policy"),
    ("unknown tokenizer", ["--config.data.tokenizer=wordpiece"], "data.tokenizer"),
    ("missing tokenizer file", ["--config.data.tokenizer=/nonexistent/x.model"], "data.tokenizer"),
    ("vocabulary too small", ["--config.model.vocab_size=256"], "model.vocab_size"),
    (
        "unknown dataset",
        ["--config.data.glob=", "--config.data.dataset=nosuchds"],
        "data.dataset='nosuchds'",
    ),
    (
        "dataset not prepared",
        [
            "--config.data.glob=",
            "--config.data.dataset=lm1b",
            "--config.data.data_dir={tmp}/nodata",
        ],
        "data.dataset='lm1b'",
    ),
    ("glob matches nothing", ["--config.data.glob={tmp}/missing/**/*.txt"], "data.glob"),
    ("unreadable corpus file", ["--config.data.glob={tmp}/dangling/*.txt"], "cannot read"),
    ("empty corpus", ["--config.data.glob={tmp}/empty/*.txt"], "holding no text"),
    ("files not UTF-8", ["--config.data.glob={tmp}/binary/*"], "not UTF-8"),
    ("workdir under a file", ["--workdir={tmp}/afile/run"], "--workdir"),
    ("workdir not writable", ["--workdir=/proc/scalelab-run"], "not writable"),
    ("workdir of another config", ["--workdir={tmp}/other"], "different config"),
    # The samples, each of which used to escape (traceback, exit 1, or silent training).
    ("remat not a policy", ["--config.model.remat=sometimes"], "model.remat='sometimes'"),
    ("init_from missing", ["--config.init_from=/no/such/dir"], "init_from='/no/such/dir'"),
    ("init_from without checkpoints", ["--config.init_from={tmp}/nodata"], "holds no checkpoint"),
    (
        "experiment file missing",
        ["--config", "experiments/nope.py"],
        "--config=experiments/nope.py: no such file",
    ),
    (  # without overrides ml_collections deferred the error to the first read: a traceback
        "experiment file missing, nothing else",
        [ALONE, "--config", "experiments/nope.py"],
        "--config=experiments/nope.py: no such file",
    ),
    ("negative weight decay", ["--config.train.weight_decay=-0.1"], "train.weight_decay=-0.1"),
    (
        "warmup beyond steps",
        ["--config.train.steps=10", "--config.train.warmup_steps=50"],
        "train.warmup_steps=50 must be at most train.steps=10",
    ),
    ("dropout of 1", ["--config.model.resid_dropout=1.0"], "model.resid_dropout=1.0"),
    ("filter not known", ["--config.data.filters.enabled=('utf8','spam')"], "data.filters.enabled"),
    ("lora pattern not a regex", ["--config.adapt.freeze=layers/("], "adapt.freeze='layers/('"),
    ("zero mesh axis", ["--config.parallel.mesh.fsdp=0"], "parallel.mesh.fsdp=0"),
    (
        "pipeline microbatches vs rows",  # read from parallel.pipeline, not parallel
        ["--config.parallel.mesh.stage=2", "--config.parallel.pipeline.microbatches=3"],
        "parallel.pipeline.microbatches=3",
    ),
    (
        "circular pipeline with too few microbatches",
        [
            "--config.parallel.mesh.stage=2",
            "--config.model.n_layers=4",
            "--config.parallel.pipeline.repeats=2",
            "--config.parallel.pipeline.microbatches=1",
        ],
        "parallel.pipeline.microbatches=1 must be at least the stage count 2",
    ),
]


def _snapshot(path: str):
    """Every entry under `path` with its size and mtime (None if `path` does not exist)."""
    if not os.path.lexists(path):
        return None
    st = os.lstat(path)
    out = {".": (st.st_size, st.st_mtime_ns)}
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            p = os.path.join(root, name)
            st = os.lstat(p)
            out[os.path.relpath(p, path)] = (st.st_size, st.st_mtime_ns)
    return out


def _argv(env, extra):
    tmp, glob = env
    argv = _base(tmp, glob)
    extra = [a.replace("{tmp}", str(tmp)) for a in extra]
    if extra[0] == ALONE:
        argv, extra = [argv[0]], extra[1:]
    if len(argv) > 1 and any(a == "--config" or a.startswith("--config=") for a in extra):
        argv = [argv[0], *extra, *argv[2:]]
        extra = []
    if not any(a.startswith("--workdir") for a in extra):
        extra.append(f"--workdir={tmp}/fresh")
    return argv + extra


def _workdir(argv) -> str:
    return next(a for a in argv if a.startswith("--workdir=")).split("=", 1)[1]


@pytest.fixture
def nothing_compiles_or_trains(monkeypatch):
    """Counts XLA compilations (cache hits included) and forbids starting a run."""
    import train.loop

    events = []

    def listen(name, *args, **kwargs):
        if "backend_compile" in name or "compile_requests_use_cache" in name:
            events.append(name)

    jax.monitoring.register_event_listener(listen)
    jax.monitoring.register_event_duration_secs_listener(listen)

    def forbidden(*args, **kwargs):
        raise AssertionError("bad input reached training")

    monkeypatch.setattr(train.loop, "train_and_evaluate", forbidden)
    yield events
    jax.monitoring.unregister_event_listener(listen)
    jax.monitoring.unregister_event_duration_listener(listen)


@pytest.mark.parametrize("name,extra,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    env, nothing_compiles_or_trains, name, extra, expected
):
    argv = _argv(env, extra)
    workdir = _workdir(argv)
    before = _snapshot(workdir)
    # Everything else the cases point at (corpora, data dirs, init_from) stays as it was too;
    # only the root's own mtime may change (the workdir's writability probe, removed at once).
    around = _snapshot(str(env[0]))
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = run_cli.cli(argv)
    lines = err.getvalue().strip().splitlines()
    assert code == 2, err.getvalue()[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert expected in lines[0], lines[0]
    assert "Traceback" not in lines[0]
    assert nothing_compiles_or_trains == [], name
    assert _snapshot(workdir) == before
    after = _snapshot(str(env[0]))
    assert {k: v for k, v in after.items() if k != "."} == {
        k: v for k, v in around.items() if k != "."
    }


def _leaves(fields: dict, prefix: str = ""):
    for name, spec in fields.items():
        if "type" in spec or "choices" in spec:
            yield f"{prefix}{name}", spec
        else:
            yield from _leaves(spec, f"{prefix}{name}.")


def _bad_values(spec: dict, block) -> list:
    """Values outside a field's declaration (a wrong type, each bound crossed, a non-choice)."""
    kind = spec.get("type")
    wrong_type = {int: [2.5, "7"], float: ["x", float("nan")], bool: ["yes", 1], str: [5]}
    bad = list(wrong_type.get(kind, [5] if kind is tuple else []))
    if "choices" in spec:
        first = spec["choices"][0]
        bad += ["no-such-choice"] if isinstance(first, str) else [max(spec["choices"]) + 1, True]
    bounds = {k: block[b] if isinstance(b, str) else b for k, b in spec.items()}
    if "min" in spec:
        bad.append(bounds["min"] - 1)
    if "max" in spec:
        bad.append(bounds["max"] + 1)
    bad += [bounds[k] for k in ("above", "below", "not") if k in spec]  # exclusive
    if "items" in spec:
        bad.append(("no-such-choice",) if "choices" in spec["items"] else (5,))
    return bad


def test_every_declared_field_rejects_values_outside_its_declaration():
    """Walks the declaration: for each field, each kind of bad value fails with one line that
    starts with the field's dotted name; the defaults pass."""
    fields = config_fields()
    check_fields(base_config(), fields)
    names = [path for path, _ in _leaves(fields)]

    def config_leaves(block, prefix=""):
        for k, v in block.items():
            yield from config_leaves(v, f"{prefix}{k}.") if hasattr(v, "items") else [prefix + k]

    assert sorted(names) == sorted(config_leaves(base_config()))  # every field, nothing else
    tried = 0
    for path, spec in _leaves(fields):
        *blocks, leaf = path.split(".")
        for value in _bad_values(spec, _block(base_config(), blocks)):
            config = ml_collections.ConfigDict(base_config().to_dict(), type_safe=False)
            _block(config, blocks)[leaf] = value
            with pytest.raises(ConfigError) as e:
                check_fields(config, fields)
            message = str(e.value)
            assert message.startswith(path) and "\n" not in message, (path, value, message)
            tried += 1
    assert tried > 2 * len(names)


def _block(config, blocks):
    for b in blocks:
        config = config[b]
    return config


def test_undeclared_and_missing_fields_are_errors():
    config = ml_collections.ConfigDict(base_config().to_dict(), type_safe=False)
    config.model.n_layer = 3
    with pytest.raises(ConfigError, match=r"^model.n_layer is not a declared config field"):
        check_fields(config, config_fields())
    config = ml_collections.ConfigDict(base_config().to_dict(), type_safe=False)
    del config.train["lr"]
    with pytest.raises(ConfigError, match=r"^train.lr is missing"):
        check_fields(config, config_fields())


def test_bounds_are_inclusive_or_exclusive_as_declared():
    config = base_config()
    config.train.update(steps=10, warmup_steps=10, weight_decay=0.0, decay_start=10)
    config.data.filters.max_bytes = config.data.filters.min_bytes  # min names a sibling field
    check_fields(config, config_fields())  # every value exactly at an inclusive bound passes
    config.model.attn_dropout = 0.999
    check_fields(config, config_fields())
    config.model.attn_dropout = 1.0  # `below`: exclusive
    with pytest.raises(ConfigError, match=r"^model.attn_dropout=1.0 must be below 1.0"):
        check_fields(config, config_fields())


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("model.sparse.layers", "0,9", "model.sparse.layers='0,9' is not 'all', 'alternate'"),
        ("model.sparse.window", 0, "model.sparse.window=0 must be at least 1"),  # grouped fields
        ("model.mup.base_width", 0, "model.mup.base_width=0 must be at least 1"),
        ("objective_args.random_frac", 0.3, "objective_args.mask_frac + random_frac = 0.8 + 0.3"),
        ("adapt.load", "(", "adapt.load='(': not a regular expression"),
        ("adapt.lora.targets", "q,v(", "adapt.lora.targets='q,v(': not a regular expression"),
    ],
)
def test_rules_across_fields(field, value, expected):
    config = base_config()
    *blocks, leaf = field.split(".")
    _block(config, blocks)[leaf] = value
    with pytest.raises(ConfigError) as e:
        check_fields(config, config_fields())
    assert str(e.value).startswith(expected), str(e.value)


def test_every_experiment_config_is_declared_and_valid():
    """The experiments' own configs pass the declaration (sweeps: every point's config)."""
    import importlib

    args = {"distill": "teacher=/tmp/teacher", "families": None}
    root = os.path.join(ROOT, "experiments")
    checked = 0
    for file in sorted(os.listdir(root)):
        name = file[:-3]
        if not file.endswith(".py") or name in ("__init__", "common") or args.get(name, "") is None:
            continue
        module = importlib.import_module(f"experiments.{name}")
        config = module.get_config(args.get(name, ""))
        if config.kind == "study":  # every run stage's config (compression studies need a run)
            if name not in ("compress_ckpt", "prune_curve"):
                for stage in module.get_stages(config, "/tmp/study"):
                    if stage.config is not None:
                        check_fields(stage.config, config_fields())
                        checked += 1
            continue
        check_fields(config, config_fields())
        checked += 1
        if hasattr(module, "get_sweep"):  # a sweep's points relabel model.size ('L4xD128')
            for point in module.get_sweep(config):
                check_fields(module.point_config(config, point), config_fields())
                checked += 1
        if hasattr(module, "get_stages"):  # a study's run stages
            for stage in module.get_stages(config, "/nonexistent/study"):
                if stage.config is not None:
                    check_fields(stage.config, config_fields())
                    checked += 1
    assert checked >= 20


def test_pipeline_fields_are_read_from_parallel_pipeline():
    """The divisibility of the pipeline (parallel.pipeline.microbatches): it once read
    parallel.microbatches, a field that does not exist, and so never fired."""
    config = base_config("tiny")
    config.data.batch_size = 8
    config.parallel.mesh.update(data=4, stage=2)
    check_config(config, n_devices=8)  # M = 0: one microbatch per stage, 4 rows over data=4
    config.parallel.pipeline.microbatches = 3
    with pytest.raises(ConfigError, match=r"^parallel.pipeline.microbatches=3 does not divide"):
        check_config(config, n_devices=8)
    config.parallel.pipeline.microbatches = 4  # 2 rows per microbatch over data=4
    with pytest.raises(ConfigError, match=r"^parallel.pipeline.microbatches=4 leaves 2 rows"):
        check_config(config, n_devices=8)
    config.parallel.pipeline.microbatches = 0
    config.parallel.mesh.stage = 1  # not pipelined: the field is unused, any value passes
    config.parallel.mesh.data = -1
    config.parallel.pipeline.microbatches = 3
    check_config(config, n_devices=8)


# A few through the real entry point, in parallel: the exit code of the process itself (the
# experiment file and remat cases exited 1 with a traceback from `python launch/run.py`).
SUBPROCESS_CASES = [
    "unknown key",
    "heads vs d_model",
    "workdir of another config",
    "experiment file missing, nothing else",
    "remat not a policy",
]


@pytest.mark.slow
def test_bad_input_exits_2_from_the_real_command_line(env, tmp_path):
    cases = {c[0]: c for c in CASES}
    procs = {}
    for name in SUBPROCESS_CASES:
        argv = _argv(env, cases[name][1])
        argv[0] = "launch/run.py"
        out = open(tmp_path / f"{len(procs)}.err", "w+")
        proc = subprocess.Popen(
            [sys.executable, *argv],
            cwd=ROOT,
            env=dict(os.environ, JAX_PLATFORMS="cpu"),
            stdout=subprocess.DEVNULL,
            stderr=out,
        )
        procs[name] = (proc, out, _snapshot(_workdir(argv)), _workdir(argv))
    for name, (proc, out, before, workdir) in procs.items():
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        stderr = out.read()
        out.close()
        assert proc.returncode == 2, (name, stderr[-2000:])
        last = stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and cases[name][2] in last, (name, stderr[-2000:])
        assert "Traceback" not in stderr, (name, stderr[-2000:])
        assert _snapshot(workdir) == before


def test_check_shared_refuses_local_dirs_only_with_several_processes():
    from data.config import default_data_config
    from train.validate import ConfigError, check_shared

    data = default_data_config()  # the stdlib corpus, built on each host: a local data_dir is fine
    check_shared("runs/x", data, process_count=1)
    with pytest.raises(ConfigError) as e:
        check_shared("runs/x", data, process_count=2)
    line = str(e.value)
    assert line.startswith("--workdir=runs/x is a local directory, but 2 processes") and (
        "--workdir=gs://" in line and "--shared_workdir" in line and "\n" not in line
    )
    check_shared("runs/x", data, shared_workdir=True, process_count=2)
    check_shared("gs://bucket/x", data, process_count=4)
    catalog = data.copy_and_resolve_references()
    catalog.dataset, catalog.data_dir = "c4/en", "/data/tfds"
    with pytest.raises(ConfigError, match=r"^data.data_dir='/data/tfds' .*--shared_data_dir"):
        check_shared("gs://bucket/x", catalog, process_count=2)
    check_shared("gs://bucket/x", catalog, shared_data_dir=True, process_count=2)
    catalog.data_dir = "gs://bucket/tfds"
    check_shared("gs://bucket/x", catalog, process_count=2)
    check_shared("runs/x", catalog, process_count=1)


def test_local_workdir_with_two_processes_exits_2_from_the_command_line(env, monkeypatch):
    """The check as `launch/run.py` runs it, with `jax.process_count()` answering 2 (the real
    two-process run is in tests/test_parallel_distributed.py)."""
    import jax

    monkeypatch.setattr(jax, "process_count", lambda *a: 2)
    tmp, _ = env
    workdir = f"{tmp}/pod_run"
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = run_cli.cli(_argv(env, [f"--workdir={workdir}"]))
    lines = err.getvalue().strip().splitlines()
    assert code == 2 and len(lines) == 1, err.getvalue()
    assert lines[0].startswith(f"error: --workdir={workdir} is a local directory, but 2 processes")
    assert not os.path.exists(workdir)
