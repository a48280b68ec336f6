"""The DPO study (experiments/dpo.py) on the one loop: its `dpo` stage survives SIGKILL bitwise,
and the whole study runs end to end on a tiny setting, a rerun skipping every finished stage."""

import json
import os
import sys

import pytest

from common import atomic
from data.instructions import _cache_path, extract_pairs
from experiments import dpo as study
from studies.stages import run_study
from tests.helpers import Proc, kill_during_save_and_resume, make_corpus
from tests.test_train_dpo import PROMPT, hand_pairs
from train.metrics import read_metrics

STEPS, EVERY = 16, 4

# The study's `dpo` stage as studies/stages.py runs it: the one loop with the run's recipes.
_STAGE = """
import sys
from pathlib import Path
from studies.recipes import recipe_for
from tests.test_train_dpo import policy_config
from train.loop import train_and_evaluate
config = policy_config(Path(sys.argv[1]), steps={steps})
config.train.update(ckpt_every={every}, keep_ckpts=5, eval_every=8)
train_and_evaluate(config, sys.argv[2], desc="dpo", recipe=recipe_for(config))
print("stage done", flush=True)
"""


def _stage(tmp, workdir, **env) -> Proc:
    """The `dpo` stage in a subprocess."""
    code = _STAGE.format(steps=STEPS, every=EVERY)
    return Proc([sys.executable, "-c", code, str(tmp), workdir], f"{workdir}.err", **env)


@pytest.mark.slow
def test_dpo_stage_killed_mid_run_resumes_bitwise(tmp_path):
    start = lambda workdir, **env: _stage(tmp_path, workdir, **env)
    logged = kill_during_save_and_resume(start, tmp_path, STEPS, EVERY, timeout=300)
    assert sorted(s for s, k in logged if k == "train/loss") == list(range(1, STEPS + 1))
    assert sorted(s for s, k in logged if k == "eval/loss") == [8, 16]
    assert {"train/accuracy", "train/margin", "train/reward_margin"} <= {k for _, k in logged}
    # the pairs are learned: the held-out reward margin and accuracy rise
    assert logged[16, "eval/reward_margin"] > logged[8, "eval/reward_margin"] > 0
    assert logged[STEPS, "train/margin"] > logged[1, "train/margin"]


def tiny_study(tmp_path):
    """The study shrunk to seconds a stage: a 1-layer model, a few steps, hand-made pairs
    rescored by the SFT model, instruction pairs of a dozen stdlib modules."""
    config = study.get_config(
        "pre_steps=2,sft_steps=2,steps=2,batch=8,max_prompt=128,max_new=8,heldout=3,"
        "heldout_samples=2,gen_batch=8,eval_percent=50"
    )
    config.model.update(n_layers=1, d_model=32, n_heads=2, d_ff=64)
    config.data.update(
        glob=make_corpus(str(tmp_path / "corpus"), 10),
        data_dir=str(tmp_path / "tfds"),
        val_fraction=0.2,
        seq_len=64,
        batch_size=8,
    )
    for train in (config.pretrain, config.sft.train, config.policy.train):
        train.update(grad_accum=1, eval_batches=1, eval_every=2, ckpt_every=2, peak_flops=1e11)
    config.pretrain.warmup_steps = config.sft.train.warmup_steps = 0
    config.sft.batch_size = 8
    stdlib = os.path.dirname(os.__file__)
    names = ("argparse", "inspect", "typing", "pathlib", "ast", "calendar", "tarfile", "zipfile")
    seeded = []
    for name in names:  # the cache data/instructions.py would extract from the whole stdlib
        with open(os.path.join(stdlib, f"{name}.py")) as f:
            seeded += extract_pairs(f.read(), f"{name}.py")
    os.makedirs(os.path.dirname(_cache_path(config.data)))
    atomic.write_json(_cache_path(config.data), seeded)
    config.dpo.pairs = str(tmp_path / "earlier_pairs.json")
    made = [p | {"prompt": PROMPT} for p in hand_pairs(40, ref=False)]
    atomic.write_json(config.dpo.pairs, {"pool": {"parse_fraction": 0.5}, "pairs": made})
    return config


@pytest.mark.slow
def test_the_study_runs_end_to_end_and_a_rerun_skips_finished_stages(tmp_path, capsys):
    config = tiny_study(tmp_path)
    workdir = str(tmp_path / "study")
    out = run_study(config, study, workdir)
    assert not out["preempted"]
    rows = out["rows"]
    assert list(rows) == ["pretrain", "sft", "pairs", "dpo", "heldout"]
    assert all(r["status"] == "ok" for r in rows.values())
    assert rows["sft"]["step"] == 2 and rows["dpo"]["step"] == 2
    assert rows["pairs"]["pairs"] == 40 and rows["heldout"]["heldout_prompts"] == 3
    written = json.loads(atomic.read_text(f"{workdir}/pairs/pairs.json"))["pairs"]
    assert all(p["ref_chosen_logp"] < 0 and p["ref_rejected_logp"] < 0 for p in written)
    assert {"train/accuracy", "train/margin", "eval/reward_margin"} <= set(
        read_metrics(f"{workdir}/dpo/metrics.jsonl")[-1]
    ) | set(read_metrics(f"{workdir}/dpo/metrics.jsonl")[-2])
    report = atomic.read_text(f"{workdir}/report.md")
    assert "| SFT | 3 | 6 |" in report and "| DPO | 3 | 6 |" in report
    assert "Pairs: 40 from 40 train prompts" in report
    capsys.readouterr()
    again = run_study(config, study, workdir)
    printed = capsys.readouterr().out
    assert "stage" not in printed.replace("study: 5 stages", "")  # nothing ran again
    assert again["rows"] == rows
