"""The pre-train -> adapt / fine-tune studies (experiments/adapt.py, classify.py, seq2seq.py):
their stages, their tables, and one end to end through launch/run.py's study runner."""

import os

import pytest

from experiments import adapt, classify, seq2seq
from studies.stages import run_study
from tests.helpers import make_corpus


def test_adapt_study_stages_start_from_the_pretraining_run():
    config = adapt.get_config("steps=7,pre_steps=9,rank=4")
    assert config.kind == "study"
    stages = adapt.get_stages(config, "/w")
    assert [s.name for s in stages] == ["pretrain", "before", "full", "lora", "prompt", "counts"]
    runs = {s.name: s.config for s in stages if s.config is not None}
    assert runs["pretrain"].train.steps == 9 and not runs["pretrain"].init_from
    assert "study" not in runs["pretrain"] and runs["pretrain"].kind == "train"
    for method in ("full", "lora", "prompt"):
        c = runs[method]
        assert (c.init_from, c.adapt.method, c.train.steps) == ("/w/pretrain", method, 7)
        assert c.train.lr == adapt.LR[method] and c.data.glob.endswith("asyncio/*.py")
    assert runs["lora"].adapt.lora.rank == 4
    # One phase alone is the same config as the study's stage.
    alone = adapt.get_config("method=lora,base=/w/pretrain,steps=7,pre_steps=9,rank=4")
    assert alone.to_dict() == runs["lora"].to_dict()


def test_task_study_stages():
    config = classify.get_config("steps=5,pre_steps=6,classes=3")
    names = [s.name for s in classify.get_stages(config, "/w")]
    assert names == ["pretrain", "before", "finetune", "scratch"]
    runs = {s.name: s.config for s in classify.get_stages(config, "/w") if s.config is not None}
    assert runs["pretrain"].objective == "masked_lm" and runs["pretrain"].train.steps == 6
    assert runs["finetune"].init_from == "/w/pretrain" and runs["scratch"].init_from == ""
    for name in ("finetune", "scratch"):
        assert runs[name].objective == "classification" and runs[name].model.num_classes == 3
        assert runs[name].train.steps == 5
    alone = classify.get_config("phase=finetune,base=/w/pretrain,steps=5,pre_steps=6,classes=3")
    assert alone.to_dict() == runs["finetune"].to_dict()
    s2s = seq2seq.get_config("scratch=False,decode=4")
    assert [s.name for s in seq2seq.get_stages(s2s, "/w")] == [
        "pretrain",
        "before",
        "finetune",
        "decode",
    ]


def test_task_report_table():
    config = seq2seq.get_config("")
    rows = {
        "pretrain": {"step": 300, "eval/loss": 2.5, "stage_wall_s": 100.4, "load_1min": 2.0},
        "before": {
            "eval/loss": 6.0,
            "exact_match": 0.0,
            "decoded": 4,
            "task": "seq2seq (naming)",
            "baseline": {"label": "run", "value": 0.25},
            "examples": {"train": 80, "held_out": 20},
            "stage_wall_s": 3.0,
            "load_1min": 2.5,
        },
        "finetune": {"step": 200, "eval/loss": 1.25, "stage_wall_s": 50.0, "load_1min": 1.5},
        "decode": {"finetune": {"exact_match": 0.5, "decoded": 4}, "stage_wall_s": 9.0},
    }
    assert seq2seq.report(config, rows) == "\n".join(
        [
            "seq2seq (naming): 80 train / 20 held-out examples; majority baseline ('run') "
            "exact match 0.2500",
            "",
            "| phase | steps | held-out loss (nats) | exact match | wall (s) | load (1 min) |",
            "| --- | --- | --- | --- | --- | --- |",
            "| pretrain | 300 | 2.5000 | - | 100 | 2.0 |",
            "| before | 0 | 6.0000 | 0.0000 | 3 | 2.5 |",
            "| finetune | 200 | 1.2500 | 0.5000 | 50 | 1.5 |",
            "",
            "decoding 4 held-out examples per phase took 9 s",
        ]
    )


@pytest.mark.slow
def test_classify_study_end_to_end(tmp_path):
    """Pre-train a 1-layer encoder, evaluate it on a 2-package task, fine-tune it and train the
    control; the table has every phase and the finetune run started from the pre-training."""
    for package, line in (("a", "x = 1\n"), ("b", "print('zz')\n")):
        os.makedirs(tmp_path / "task" / package)
        for i in range(8):
            (tmp_path / "task" / package / f"m{i}.py").write_text(line * 40)
    config = classify.get_config("classes=2,steps=4,pre_steps=4,runlocal")
    config.data.glob = make_corpus(str(tmp_path / "corpus"), n_files=40)
    config.data.val_fraction = 0.2
    config.data.data_dir = str(tmp_path / "tfds")
    config.data.seq_len = config.model.max_len = 32
    config.model.update(n_layers=1, d_model=32, n_heads=2, d_ff=64)
    config.train.update(steps=4, eval_every=4, ckpt_every=4, grad_accum=1, peak_flops=1e11)
    config.study.runlocal = False  # the task runs: `steps` steps, the whole held-out split
    config.data.task.root = str(tmp_path / "task")
    config.data.task.val_percent = 50
    workdir = str(tmp_path / "study")
    rows = run_study(config, classify, workdir)["rows"]
    assert [rows[n]["status"] for n in ("pretrain", "before", "finetune", "scratch")] == ["ok"] * 4
    assert rows["finetune"]["resumed_from"] == 0 and rows["finetune"]["step"] == 4
    assert 0.0 <= rows["before"]["eval/accuracy"] <= 1.0
    n = rows["before"]["examples"]
    assert n["train"] > 0 and n["held_out"] > 0
    with open(os.path.join(workdir, "report.md")) as f:
        table = f.read()
    want = f"classification (packages): {n['train']} train / {n['held_out']} held-out examples"
    assert table.startswith(want)
    for name in ("pretrain", "before", "finetune", "scratch"):
        assert f"| {name} |" in table


@pytest.mark.slow
def test_adapt_study_end_to_end(tmp_path):
    """Pre-train a 1-layer GPT for 2 steps, then 2 steps of each method on the asyncio package."""
    config = adapt.get_config("steps=2,pre_steps=2,rank=2,prompt_len=2")
    config.data.glob = make_corpus(str(tmp_path / "corpus"), n_files=40)
    config.data.data_dir = str(tmp_path / "tfds")
    config.model.update(n_layers=1, d_model=32, n_heads=2, d_ff=64)
    config.train.update(grad_accum=1, peak_flops=1e11, eval_batches=2)
    workdir = str(tmp_path / "study")
    rows = run_study(config, adapt, workdir)["rows"]
    counts, total = rows["counts"], rows["before"]["params"]
    # The base model's parameter count from its real tree equals the one from shapes alone.
    assert counts["full"]["trainable"] == counts["full"]["params"] == total
    assert 0 < counts["prompt"]["trainable"] < counts["lora"]["trainable"] < total
    for method in ("full", "lora", "prompt"):
        assert rows[method]["step"] == 2 and rows[method]["resumed_from"] == 0
    with open(os.path.join(workdir, "report.md")) as f:
        table = f.read().splitlines()
    assert table[2].startswith(f"| base (no adaptation) | {rows['before']['eval/loss']:.4f} |")
    assert [line.split(" | ")[0] for line in table[3:]] == ["| full", "| lora", "| prompt"]
