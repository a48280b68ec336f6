"""The RLHF study (experiments/rlhf.py) on the one loop: a PPO stage killed with SIGKILL and
resumed ends with the uninterrupted run's policy, and the smoke study runs end to end, a rerun
skipping every finished stage."""

import os
import sys

import jax
import pytest

from common import atomic
from data.instructions import _cache_path, extract_pairs
from experiments import rlhf as study
from studies.stages import run_study
from tests.helpers import Proc, kill_during_save_and_resume, make_corpus
from tests.test_train_dpo import PROMPT, hand_pairs
from train.metrics import read_metrics

NAMES = ("argparse", "inspect", "typing", "pathlib", "ast", "calendar", "tarfile", "zipfile")


def tiny_study(tmp_path, seeds: int = 1):
    """The smoke preset shrunk further (2 steps of every run stage, 8 new tokens, 2 held-out
    prompts) on a corpus of ten stdlib modules and the instruction pairs of eight (seconds a
    stage)."""
    config = study.get_config(
        f"preset=smoke,seeds={seeds},max_new=8,pre_steps=2,sft_steps=2,prompts=8,samples=4,"
        "rm_steps=2,rl_steps=2,dpo_steps=2,heldout=2"
    )
    config.data.update(
        glob=make_corpus(str(tmp_path / "corpus"), 10),
        data_dir=str(tmp_path / "tfds"),
        val_fraction=0.2,
        seq_len=64,
        batch_size=8,
    )
    trains = (config.pretrain, config.sft.train, config.policy.train)
    for train in (*trains, config.reward_model.train, config.rl_policy.train):
        train.update(peak_flops=1e11)
    stdlib = os.path.dirname(os.__file__)
    seeded = []
    for name in NAMES:  # the cache data/instructions.py would extract from the whole stdlib
        with open(os.path.join(stdlib, f"{name}.py")) as f:
            seeded += extract_pairs(f.read(), f"{name}.py")
    os.makedirs(os.path.dirname(_cache_path(config.data)))
    atomic.write_json(_cache_path(config.data), seeded)
    # hand-made pairs, rescored by the SFT model: a random 1-layer model's samples rarely differ
    config.dpo.pairs = str(tmp_path / "earlier_pairs.json")
    made = [p | {"prompt": PROMPT, "gap": 0.5} for p in hand_pairs(40, ref=False)]
    atomic.write_json(config.dpo.pairs, {"pool": {"judge_score": 0.5}, "pairs": made})
    return config


@pytest.mark.slow
def test_the_smoke_study_runs_end_to_end_and_a_rerun_skips_finished_stages(tmp_path, capsys):
    config = tiny_study(tmp_path)
    workdir = str(tmp_path / "study")
    rows = run_study(config, study, workdir)["rows"]
    names = ["pretrain", "sft", "pairs", "reward", "reward_eval", "dpo_0", "ppo_0", "grpo_0"]
    names += ["heldout"]
    assert list(rows) == names and all(r["status"] == "ok" for r in rows.values())
    ev = rows["reward_eval"]
    assert ev["eval_pairs"] == rows["pairs"]["eval_pairs"] > 0
    assert 0 <= ev["majority_baseline"] <= 1 and 0 <= ev["accuracy"] <= 1
    assert ev["rm_step"] in (1, 2)  # the reward model's evaluated checkpoints
    assert sum(b["count"] for b in ev["bins"]) == ev["eval_pairs"]
    held = rows["heldout"]["per_seed"]
    assert set(held) == {"0"} and set(held["0"]) == {"sft", "dpo", "ppo", "grpo"}
    assert held["0"]["sft"]["kl_ref"] == 0.0  # SFT is the reference
    for r in held["0"].values():
        assert 0 <= r["judge_score"] <= 1 and 1 <= r["length"] <= 8
    for n in ("ppo_0", "grpo_0"):
        last = read_metrics(f"{workdir}/{n}/metrics.jsonl")[-1]
        assert {"eval/rm_score", "eval/judge_score", "eval/kl_ref", "eval/length"} <= set(last)
    assert os.path.getsize(f"{workdir}/rlhf_scores.png") > 10_000
    report = atomic.read_text(f"{workdir}/report.md")
    assert "| PPO | 1 |" in report and "| GRPO | 1 |" in report and " ± " in report
    assert f"accuracy {ev['accuracy']:.3f} [" in report
    capsys.readouterr()
    again = run_study(config, study, workdir)
    printed = capsys.readouterr().out
    assert "stage" not in printed.replace("study: 9 stages", "")  # nothing ran again
    assert again["rows"] == rows


def fake_run(workdir: str, model_cfg, params) -> str:
    """A finished run's directory as frozen inputs read it: config.json and a checkpoint."""
    import orbax.checkpoint as ocp

    if os.path.exists(f"{workdir}/config.json"):  # made by an earlier process of the test
        return workdir
    os.makedirs(workdir)
    atomic.write_json(f"{workdir}/config.json", {"model": model_cfg.to_dict()})
    with ocp.CheckpointManager(os.path.abspath(f"{workdir}/checkpoints")) as manager:
        manager.save(0, args=ocp.args.Composite(state=ocp.args.StandardSave({"params": params})))
    return workdir


def frozen_runs(tmp_path, model_cfg) -> tuple[str, str]:
    """(reference, reward model) workdirs: a random decoder and one with a random score head."""
    import flax.linen as nn

    from models import decoder
    from prefs.heads import SCORE_HEAD, WithHead

    sft = nn.unbox(decoder.init(jax.random.key(1), model_cfg))
    rm = nn.unbox(WithHead(decoder, SCORE_HEAD).init(jax.random.key(2), model_cfg))
    rm[SCORE_HEAD]["w"] = jax.random.normal(jax.random.key(3), rm[SCORE_HEAD]["w"].shape)
    return (
        fake_run(str(tmp_path / "sft"), model_cfg, jax.device_get(sft)),
        fake_run(str(tmp_path / "rm"), model_cfg, jax.device_get(rm)),
    )


def rl_config(tmp_path, algo: str = "ppo", steps: int = 6):
    """The study's `ppo_0` (or `grpo_0`) stage on random frozen runs and a dozen modules'
    instruction prompts."""
    config = study.get_config("preset=smoke,seeds=1,max_new=8")
    config.data.data_dir = str(tmp_path / "tfds")
    stdlib = os.path.dirname(os.__file__)
    seeded = []
    for name in NAMES:
        with open(os.path.join(stdlib, f"{name}.py")) as f:
            seeded += extract_pairs(f.read(), f"{name}.py")
    if not os.path.exists(_cache_path(config.data)):
        os.makedirs(os.path.dirname(_cache_path(config.data)), exist_ok=True)
        atomic.write_json(_cache_path(config.data), seeded)
    run = study.stage_configs(config, str(tmp_path / "study"))[f"{algo}_0"]
    sft, rm = frozen_runs(tmp_path, config.model)
    run.init_from = sft
    run.rl.update(reference=sft, reward_model=rm, epochs=3, heldout_prompts=2)
    run.train.update(steps=steps, lr=3e-3, warmup_steps=0, log_every=1, peak_flops=1e11)
    return run


STEPS, EVERY = 6, 2

# The study's `ppo_0` stage as studies/stages.py runs it: the one loop with the run's recipes.
_STAGE = """
import sys
from pathlib import Path
from studies.recipes import recipe_for
from tests.test_studies_rlhf import rl_config
from train.loop import train_and_evaluate
config = rl_config(Path(sys.argv[1]), steps={steps})
config.train.update(ckpt_every={every}, keep_ckpts=5, eval_every=3)
train_and_evaluate(config, sys.argv[2], desc="ppo", recipe=recipe_for(config))
print("stage done", flush=True)
"""


def _stage(tmp, workdir, **env) -> Proc:
    """The stage in a subprocess that shares this process's compilation cache (conftest.py):
    the second and third processes load the programs the first compiled."""
    code = _STAGE.format(steps=STEPS, every=EVERY)
    cache = {
        "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir,
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }
    return Proc([sys.executable, "-c", code, str(tmp), workdir], f"{workdir}.err", **cache, **env)


@pytest.mark.slow
def test_a_ppo_stage_killed_mid_run_resumes_to_the_same_policy(tmp_path):
    # step 2 is inside the first rollout (3 updates each): its rows come from the checkpoint
    start = lambda workdir, **env: _stage(tmp_path, workdir, **env)
    logged = kill_during_save_and_resume(start, tmp_path, STEPS, EVERY)
    probe = {"eval/rm_score", "eval/judge_score", "eval/kl_ref", "eval/length"}
    assert probe | {"eval/approx_kl", "train/clip_fraction", "train/value_loss"} <= {
        k for _, k in logged
    }
    assert sorted(s for s, k in logged if k == "eval/judge_score") == [3, 6]
    assert 0 <= logged[6, "eval/judge_score"] <= 1 and logged[6, "eval/length"] > 0
    # the policy moved away from the reference it started at
    assert logged[6, "eval/kl_ref"] != 0 and logged[STEPS, "train/approx_kl"] != 0
