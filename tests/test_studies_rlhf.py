"""The RLHF study (experiments/rlhf.py) on the one loop: a PPO stage killed with SIGKILL and
resumed ends with the uninterrupted run's policy, and the smoke study runs end to end, a rerun
skipping every finished stage."""

import json
import os

import pytest

from common import atomic
from data.instructions import _cache_path, extract_pairs
from experiments import rlhf as study
from studies.stages import run_study
from tests.helpers import make_corpus
from tests.test_train_dpo import PROMPT, hand_pairs


def tiny_study(tmp_path, seeds: int = 3):
    """The smoke preset on a corpus of a dozen stdlib modules (seconds a stage)."""
    config = study.get_config(f"preset=smoke,seeds={seeds}")
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
    names = ("argparse", "inspect", "typing", "pathlib", "ast", "calendar", "tarfile", "zipfile")
    seeded = []
    for name in names:  # the cache data/instructions.py would extract from the whole stdlib
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
    config = tiny_study(tmp_path, seeds=3)
    workdir = str(tmp_path / "study")
    out = run_study(config, study, workdir)
    rows = out["rows"]
    assert all(r["status"] == "ok" for r in rows.values())
    names = ["pretrain", "sft", "pairs", "reward", "reward_eval"]
    names += [f"{n}_{s}" for s in range(3) for n in ("dpo", "ppo", "grpo")] + ["heldout"]
    assert list(rows) == names
    print(json.dumps(rows["reward_eval"], indent=1), json.dumps(rows["heldout"], indent=1))
