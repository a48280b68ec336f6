"""The stage runner: a multi-stage study (pre-train, fine-tune, compare) as one resumable command.

An experiment whose config has `kind = "study"` defines, beside `get_config`,
  get_stages(config, workdir) -> list[Stage]   the stages, in order
  report(config, rows) -> str                  the study's markdown report from the stage rows
and `launch/run.py --config experiments/X.py --workdir DIR` runs them. A stage is either a run
(`config`, trained by the one loop `train.loop.train_and_evaluate` in `DIR/<name>` with the
recipe its config asks for) or an `action(stage_dir, rows) -> row` (sampling, judging, scoring,
compressing: work that is not training). A run stage with `record_nonfinite` that stops on a
non-finite loss or gradient (`train.nan_policy`) is recorded with status 'diverged' and the study
goes on (an LR grid's largest rates). The study workdir holds:
  config.json     the study config (a rerun with another config is refused)
  results.jsonl   one row per finished stage (`stage`, `status` 'ok' or 'diverged', the run's
                  summary or the action's row, `stage_wall_s` and the 1-minute load average
                  `load_1min` at its end), rewritten atomically after each stage
  <name>/         each stage's own directory (a run's checkpoints, metrics and summary)
  report.md       `report(config, rows)` once every stage is done

Rerunning the command skips finished stages and resumes an interrupted run stage from its newest
checkpoint (a SIGTERM stops the study after the current step with a checkpoint), so a study
killed at any moment ends with the rows of an uninterrupted one. A stage that raises stops the
study with the rows before it intact; the rerun starts again at that stage. Actions must be
deterministic given their inputs (`rows`: the finished stages with status 'ok'); a killed action
is rerun from its start.
"""

import os
import time

import jax

from common import atomic
from studies.recipes import recipe_for
from train.loop import NonFiniteError, Run, claim_workdir, train_and_evaluate
from train.recipe import Stage, stage_dir

__all__ = ["Stage", "run_config", "run_study", "stage_dir"]
from train.validate import ConfigError, check_config

FINISHED = ("ok", "diverged")


def run_config(study_config, *blocks: str):
    """A copy of `study_config` as one run's config: kind 'train', without the study's own
    `blocks` (the arguments its stages are built from)."""
    c = study_config.copy_and_resolve_references()
    with c.unlocked():
        for block in blocks:
            del c[block]
    c.kind = "train"
    return c


def initial_eval(config, make_batches) -> tuple[Run, dict]:
    """`(run, {'eval/<name>': value})`: a `config` run evaluated at step 0 (before any update) on
    `make_batches(run)`, the 'before' row of a fine-tuning study."""
    run = Run(config, recipe=recipe_for(config))
    ev = run.evaluate(run.state.params, [run.global_batch(b) for b in make_batches(run)])
    return run, {f"eval/{k}": v for k, v in ev.items()}


def run_study(config, module, workdir: str, *, dry_run: bool = False) -> dict:
    """Runs the stages `module.get_stages(config, workdir)` still needed; returns
    `{'rows': {stage: row}, 'preempted': bool}`.

    Raises:
      ConfigError: a stage's config does not validate (before any stage runs), or two stages
        share a name.
    """
    stages = module.get_stages(config, workdir)
    names = [s.name for s in stages]
    twice = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if twice is not None:
        raise ConfigError(
            f"study stages must have distinct names; {twice!r} appears more than once"
        )
    recipes = {}
    for s in stages:  # the features' own blocks first, then each run's core config
        if s.config is not None:
            try:
                recipes[s.name] = s.recipe or recipe_for(s.config)
            except ValueError as e:
                raise ConfigError(f"stage {s.name}: {e}") from e
    for s in stages:
        if s.config is not None:
            check_config(s.config)
    is_main = jax.process_index() == 0
    if is_main:
        kinds = ", ".join(
            f"{s.name} ({'run' if s.config is not None else 'action'})" for s in stages
        )
        print(f"study: {len(stages)} stages: {kinds}", flush=True)
    if dry_run:
        return {"rows": {}, "preempted": False}
    claim_workdir(workdir, config, "study", write=is_main)
    results_path = os.path.join(workdir, "results.jsonl")
    rows = atomic.read_rows(results_path, key="stage")
    for s in stages:
        if rows.get(s.name, {}).get("status") in FINISHED:
            continue
        t = time.perf_counter()
        done = {k: v for k, v in rows.items() if v.get("status") == "ok"}
        status = "ok"
        if s.config is not None:
            try:
                row = train_and_evaluate(
                    s.config, stage_dir(workdir, s.name), desc=s.name, recipe=recipes[s.name]
                )
            except NonFiniteError as e:
                if not s.record_nonfinite:
                    raise
                row, status = {"error": str(e)}, "diverged"
            if row.get("preempted"):
                return {"rows": rows, "preempted": True}
            row = dict(row)
        else:
            atomic.makedirs(stage_dir(workdir, s.name))
            row = dict(s.action(stage_dir(workdir, s.name), done))
        wall = time.perf_counter() - t
        row.update(stage=s.name, status=status, stage_wall_s=wall, load_1min=os.getloadavg()[0])
        rows[s.name] = row
        if is_main:
            atomic.write_rows(results_path, rows)
        print(f"study: stage {s.name} {status} in {row['stage_wall_s']:.0f} s", flush=True)
    if is_main:
        text = module.report(config, rows)
        atomic.write_text(os.path.join(workdir, "report.md"), text + "\n")
        print(text, flush=True)
    return {"rows": rows, "preempted": False}
