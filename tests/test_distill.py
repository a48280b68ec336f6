"""Distillation on the one training loop (distill/recipe.py, distill/loss.py).

- The loss against a hand-written numpy KL / cross-entropy, with masks; the teacher gets no
  gradient; alpha 0 is plain cross-entropy.
- A bad `distill` block is one line naming the field, before anything is written; alpha 0 is the
  control (no recipe).
- One distilled step through `Run`: the teacher, restored from its workdir with the student's
  logical shardings, is an argument of the jitted step and is not donated; the step's gradient
  is the distillation loss's (an independent host computation), not the control's, while both
  log the same cross-entropy.
- Slow: a tiny teacher, then a smaller student with it beats the same student without it
  (alpha 0, the same batches) on held-out loss; a distilled `launch/run.py` killed with SIGKILL
  between checkpoints and rerun ends bitwise where the uninterrupted run ends.
"""

import io
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import redirect_stderr

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from data.pipeline import make_train_iterator
from distill import loss as distill
from distill.recipe import default_distill_config
from experiments import distill as experiment
from experiments.gpt import get_config as gpt_config
from models import get_model
from objectives import causal_lm
from studies.recipes import recipe_for
from tests.helpers import TINY_RUN, make_corpus, small_config
from train.checkpoint import Checkpointer, load_params, load_state
from train.loop import Run, claim_workdir, train_and_evaluate
from train.metrics import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Cfg:
    vocab_size = 6


def _reference(student, teacher, tokens, seg, alpha, tau):
    total, n = 0.0, 0
    B, T, _ = student.shape
    for b in range(B):
        for t in range(T - 1):
            if seg[b, t] == 0 or seg[b, t + 1] != seg[b, t]:
                continue
            s, z = student[b, t].astype(np.float64), teacher[b, t].astype(np.float64)
            ce = np.log(np.sum(np.exp(s))) - s[tokens[b, t + 1]]
            p_t = np.exp(z / tau) / np.sum(np.exp(z / tau))
            p_s = np.exp(s / tau) / np.sum(np.exp(s / tau))
            kl = np.sum(p_t * np.log(p_t / p_s))
            total += alpha * tau**2 * kl + (1 - alpha) * ce
            n += 1
    return total / n, n


@pytest.mark.parametrize("alpha,tau", [(0.5, 2.0), (1.0, 1.0), (0.3, 4.0)])
def test_loss_matches_numpy(alpha, tau):
    rng = np.random.default_rng(0)
    B, T, V = 2, 7, 6
    student = rng.normal(size=(B, T, V)).astype(np.float32)
    teacher = (2 * rng.normal(size=(B, T, V))).astype(np.float32)
    tokens = rng.integers(0, V, (B, T)).astype(np.int32)
    seg = np.array([[1, 1, 1, 2, 2, 2, 2], [1, 1, 1, 1, 1, 0, 0]], np.int32)
    loss_fn = distill.make_loss_fn(
        _Cfg,
        lambda p, b, c, rngs=None: student * p,
        teacher_apply=lambda p, b, c: teacher * p,
        teacher_cfg=_Cfg,
        alpha=alpha,
        temperature=tau,
    )
    batch = {"tokens": tokens, "segment_ids": seg}
    loss, aux = loss_fn(1.0, batch, None, 1.0)
    ref, n = _reference(student, teacher, tokens, seg, alpha, tau)
    np.testing.assert_allclose(loss, ref, rtol=1e-5)
    assert aux["tokens"] == n == 2 + 3 + 4
    # aux is the student's plain cross-entropy, as the causal-LM objective reports it.
    _, ce_aux = causal_lm.make_loss_fn(_Cfg, lambda p, b, c, rngs=None: student)(None, batch, None)
    np.testing.assert_allclose(aux["nll_sum"], ce_aux["nll_sum"], rtol=1e-6)
    # The teacher is frozen: no gradient flows into its parameters.
    g_teacher = jax.grad(lambda tp: loss_fn(jnp.float32(1.0), batch, None, tp)[0])(jnp.float32(1.0))
    assert float(g_teacher) == 0.0


def test_alpha_zero_is_cross_entropy_and_bad_settings_fail():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(1, 5, 6)).astype(np.float32)
    batch = {"tokens": rng.integers(0, 6, (1, 5)).astype(np.int32)}
    kw = dict(teacher_apply=None, teacher_cfg=_Cfg)
    loss, _ = distill.make_loss_fn(_Cfg, lambda p, b, c, rngs=None: logits, alpha=0.0, **kw)(
        None, batch, None, None
    )
    ce, _ = causal_lm.make_loss_fn(_Cfg, lambda p, b, c, rngs=None: logits)(None, batch, None)
    np.testing.assert_allclose(loss, ce, rtol=1e-6)
    with pytest.raises(ValueError, match="distill.alpha"):
        distill.make_loss_fn(_Cfg, None, alpha=1.5, **kw)

    class _Other:
        vocab_size = 8

    with pytest.raises(ValueError, match="vocab_size"):
        distill.make_loss_fn(_Cfg, None, teacher_apply=None, teacher_cfg=_Other)


def _with_distill(config, teacher: str, alpha: float = 0.8, tau: float = 1.0):
    config.distill = default_distill_config()
    config.distill.update(teacher=teacher, alpha=alpha, temperature=tau)
    return config


def _write_teacher(config, workdir: str) -> str:
    """A teacher run directory holding `config`'s initial state with its parameters scaled up
    (no training; sharper logits than the student's, so its KL term weighs in the gradient)."""
    claim_workdir(workdir, config)
    state = Run(config).state
    state = state.replace(params=jax.tree.map(lambda x: 4 * x, state.params))
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=1, every=1)
    ckpt.save(1, state, make_train_iterator(config.data, seed=0), force=True)
    ckpt.close()
    return workdir


def test_bad_distill_blocks_are_one_line_errors_before_anything_is_written(tmp_path):
    from launch.run import cli

    config = _with_distill(small_config(tmp_path), str(tmp_path / "none"))
    assert recipe_for(_with_distill(small_config(tmp_path), "", alpha=0.0)).loss is None
    cases = [
        ({"alpha": 1.5}, "distill.alpha=1.5"),
        ({"temperature": 0.0}, "distill.temperature=0.0"),
        ({"alpha": 0.5}, "distill.teacher="),  # no such run directory
    ]
    for change, expected in cases:
        bad = config.copy_and_resolve_references()
        bad.distill.update(change)
        with pytest.raises(ValueError) as e:
            recipe_for(bad)
        assert str(e.value).startswith(expected) and "\n" not in str(e.value), str(e.value)
    # The same through the entry point: exit 2, one line naming the field, no workdir.
    glob = make_corpus(str(tmp_path / "corpus"))
    err = io.StringIO()
    with redirect_stderr(err):
        code = cli(
            [
                "run.py",
                f"--config=experiments/distill.py:teacher={tmp_path}/none",
                f"--config.data.glob={glob}",
                f"--config.data.data_dir={tmp_path}/tfds",
                "--config.train.grad_accum=1",
                f"--workdir={tmp_path}/student",
                "--compile_cache=",
            ]
        )
    assert code == 2 and err.getvalue().startswith("error: distill.teacher="), err.getvalue()
    assert len(err.getvalue().strip().splitlines()) == 1
    assert not (tmp_path / "student").exists()


def test_a_distilled_step_takes_the_teacher_as_a_frozen_argument(tmp_path):
    teacher_config = small_config(tmp_path)
    teacher_config.seed = 1  # another initialisation than the student's
    teacher_dir = _write_teacher(teacher_config, str(tmp_path / "teacher"))
    config = _with_distill(small_config(tmp_path), teacher_dir)
    config.parallel.mesh.update(data=4, tensor=2)  # so that the teacher has shards to place
    run = Run(config, recipe=recipe_for(config))
    control = Run(_with_distill(config.copy_and_resolve_references(), teacher_dir, alpha=0.0))
    teacher = load_params(teacher_dir)
    # The teacher's parameters from its directory, sharded as the student's same-shaped ones.
    frozen = run.frozen[0]
    for x, ref, sharding in zip(
        jax.tree.leaves(frozen),
        jax.tree.leaves(teacher),
        jax.tree.leaves(run.state_shardings.params),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(x), ref)
        assert x.sharding.is_equivalent_to(sharding, x.ndim)
    assert any(not s.is_fully_replicated for s in jax.tree.leaves(run.state_shardings.params))

    local = next(make_train_iterator(config.data, seed=0))
    params = jax.device_get(run.state.params)
    with run.activate():
        batch = run.global_batch(local)
        args = (run.state, batch, run.schedule_args, *run.frozen)
        (state_info, _, _, teacher_info), _ = run.train_step.lower(*args).args_info
        assert all(a.donated for a in jax.tree.leaves(state_info))
        assert not any(a.donated for a in jax.tree.leaves(teacher_info))
        _, metrics = jax.device_get(run.train_step(*args))
        assert not any(x.is_deleted() for x in jax.tree.leaves(frozen))
    with control.activate():
        _, control_metrics = jax.device_get(
            control.train_step(control.state, control.global_batch(local), control.schedule_args)
        )

    # Reference: the gradient of the distillation loss on the host, teacher from the checkpoint.
    model = get_model(config.model.family)
    loss_fn = distill.make_loss_fn(
        config.model,
        model.apply,
        teacher_apply=model.apply,
        teacher_cfg=teacher_config.model,
        alpha=0.8,
        temperature=1.0,
        bytes_per_token=run.tokenizer.bytes_per_token,
    )
    host = {k: jnp.asarray(v) for k, v in local.items()}
    grads = jax.grad(lambda p: loss_fn(p, host, None, teacher)[0])(params)
    np.testing.assert_allclose(metrics["grad_norm"], optax.global_norm(grads), rtol=1e-4)
    assert abs(metrics["grad_norm"] - control_metrics["grad_norm"]) > 1e-3
    assert metrics["kl_sum"] > 0 and "kl_sum" not in control_metrics
    # Both log the student's cross-entropy of the same parameters on the same batch.
    np.testing.assert_allclose(metrics["loss"], control_metrics["loss"], rtol=1e-5)


# The slow pair: a 2 x 128 teacher trained 200 steps, students of 1 x 64 trained 100 steps.
STEPS = 100
SHRINK = {
    **TINY_RUN,
    "train.eval_batches": 2,
    "train.peak_flops": 1e11,
}


def _student_arg(teacher: str, alpha: float) -> str:
    return f"teacher={teacher},alpha={alpha},tau=1.0,steps={STEPS}"


def _overrides(tmp) -> dict:
    return {
        **SHRINK,
        "data.glob": make_corpus(str(tmp / "corpus")),
        "data.data_dir": str(tmp / "tfds"),
    }


def _apply(config, overrides: dict):
    for key, value in overrides.items():
        *blocks, leaf = key.split(".")
        block = config
        for b in blocks:
            block = block[b]
        block[leaf] = value
    return config


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Held-out summaries of the teacher and of the student with and without it (in-process)."""
    tmp = tmp_path_factory.mktemp("distill")
    overrides = _overrides(tmp)
    teacher = str(tmp / "teacher")
    tconfig = _apply(gpt_config("size=tiny,steps=200"), overrides)
    tconfig.model.update(n_layers=2, d_model=128, d_ff=512)
    out = {"tmp": tmp, "teacher_dir": teacher, "teacher": train_and_evaluate(tconfig, teacher)}
    for name, alpha in (("distilled", 0.8), ("control", 0.0)):
        config = _apply(experiment.get_config(_student_arg(teacher, alpha)), overrides)
        out[f"{name}_dir"] = str(tmp / name)
        out[name] = train_and_evaluate(config, out[f"{name}_dir"], recipe=recipe_for(config))
    return out


@pytest.mark.slow
def test_the_teacher_lowers_the_students_held_out_loss(runs):
    teacher, kd, ce = (runs[k]["eval/loss"] for k in ("teacher", "distilled", "control"))
    print(f"held-out nats/token: teacher {teacher:.4f}, student {kd:.4f}, control {ce:.4f}")
    assert teacher < kd < ce - 0.05
    # The control is the plain objective: no KL logged; the distilled run logs it.
    rows = lambda name: read_metrics(f"{runs[f'{name}_dir']}/metrics.jsonl")
    assert any("train/kl" in r for r in rows("distilled"))
    assert not any("train/kl" in r for r in rows("control"))
    assert runs["distilled"]["params_total"] < runs["teacher"]["params_total"]


def _committed(workdir) -> int:
    d = f"{workdir}/checkpoints"
    return max((int(n) for n in os.listdir(d) if n.isdigit()), default=0) if os.path.isdir(d) else 0


def _logged(workdir) -> int:
    path = f"{workdir}/metrics.jsonl"
    rows = read_metrics(path) if os.path.exists(path) else []
    return max((r["step"] for r in rows if "train/loss" in r), default=0)


def _launch(tmp, workdir) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "launch/run.py",
        f"--config=experiments/distill.py:{_student_arg(f'{tmp}/teacher', 0.8)}",
        *(f"--config.{k}={v}" for k, v in _overrides(tmp).items()),
        f"--workdir={workdir}",
        f"--compile_cache={tmp}/cache",
    ]
    # The test process's XLA_FLAGS (8 devices, conftest.py), so it computes as the reference did;
    # this checkout's modules first.
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    err = open(f"{workdir}.err", "a")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err, text=True)


def _stderr(workdir) -> str:
    with open(f"{workdir}.err") as f:
        return f.read()[-3000:]


def _rows(workdir) -> list[dict]:
    """metrics.jsonl without the timings (each start of a process logs its compile time)."""
    rows = [
        {k: v for k, v in r.items() if not k.startswith("perf/")}
        for r in read_metrics(f"{workdir}/metrics.jsonl")
    ]
    return [r for r in rows if len(r) > 1]


@pytest.mark.slow
def test_a_killed_distillation_run_resumes_bitwise(runs):
    tmp, reference = runs["tmp"], runs["distilled_dir"]
    workdir = str(tmp / "killed")
    p = _launch(tmp, workdir)
    deadline = time.time() + 600
    while not (_committed(workdir) >= 40 and _logged(workdir) >= 50):
        assert p.poll() is None and time.time() < deadline, _stderr(workdir)
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.wait()
    at = _committed(workdir)
    assert 40 <= at < STEPS
    print(f"SIGKILL with step {at} committed and step {_logged(workdir)} logged")
    p = _launch(tmp, workdir)
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, _stderr(workdir)
    assert f"continuing from step {at} of {workdir}" in out, out
    with open(f"{workdir}/config.json") as a, open(f"{reference}/config.json") as b:
        assert json.load(a) == json.load(b)
    a = jax.tree.leaves(load_state(f"{workdir}/checkpoints", STEPS))
    b = jax.tree.leaves(load_state(f"{reference}/checkpoints", STEPS))
    assert len(a) == len(b) > 10
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    rows = _rows(workdir)
    assert rows == _rows(reference)
    assert [r["step"] for r in rows if "train/loss" in r] == list(range(10, STEPS + 1, 10))
