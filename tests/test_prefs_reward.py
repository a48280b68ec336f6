"""The reward model (prefs/heads.py, prefs/reward_loss.py, prefs/reward_recipe.py,
prefs/critic.py, prefs/reward_eval.py): the Bradley-Terry loss against numpy, the head at the
last token, calibration by hand, the Wilson interval against scipy, baselines fitted on the
training pairs, the train / validation / held-out split, the checkpoint of best validation
accuracy, and a tiny run of the one loop that learns a separable preference on held-out pairs."""

import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common import atomic
from data.tokenizer import ByteTokenizer
from experiments import rlhf as study
from models import decoder
from prefs import heads, reward_loss
from prefs.critic import best_step, critic_params, critic_step
from prefs.pairs import is_held_out, split_pairs
from prefs.reward_eval import baselines, calibration, first_is_chosen, reward_eval, wilson
from prefs.rlhf_study import graded_pairs
from studies.recipes import recipe_for
from train.checkpoint import load_params
from train.loop import train_and_evaluate
from train.metrics import read_metrics
from train.validate import ConfigError

TOK = ByteTokenizer()


def test_bradley_terry_loss_against_numpy():
    r_c = np.array([1.0, -0.5, 2.0, 0.3], np.float32)
    r_r = np.array([0.0, 0.5, -1.0, 9.0], np.float32)  # the last row pads (weight 0)
    w = np.array([1, 1, 1, 0], np.int32)
    # each side's first token indexes its score in `table`
    table = jnp.asarray(np.concatenate([r_c, r_r]))
    batch = {"weight": w}
    for s, first in (("chosen", 0), ("rejected", 4)):
        tokens = np.zeros((4, 3), np.int32)
        tokens[:, 0] = np.arange(first, first + 4)
        batch |= {f"{s}_tokens": tokens, f"{s}_segment_ids": np.ones((4, 3), np.int32)}
    fake_score = lambda params, side, rng=None: table[side["tokens"][:, 0]]
    loss, aux = reward_loss.make_loss_fn(fake_score)(None, batch, None)
    per = np.log1p(np.exp(-(r_c - r_r).astype(np.float64)))[:3]
    assert float(loss) == pytest.approx(per.mean(), rel=1e-6)
    assert float(aux["accuracy_sum"]) == 2 and float(aux["tokens"]) == 3
    assert float(aux["margin_sum"]) == pytest.approx(1.0 - 1.0 + 3.0)


def test_the_head_reads_the_last_non_pad_token():
    seg = jnp.asarray([[1, 1, 1, 0], [0, 1, 1, 1], [1, 0, 0, 0]])
    np.testing.assert_array_equal(heads.last_index(seg), [2, 3, 0])
    h = jnp.arange(12.0).reshape(3, 4)
    np.testing.assert_array_equal(heads.at_last(h, seg), [2.0, 7.0, 8.0])


def test_with_head_keeps_the_lm_and_starts_at_zero():
    cfg = study.get_config("preset=smoke").model
    model = heads.WithHead(decoder, heads.SCORE_HEAD)
    params = nn.unbox(model.init(jax.random.key(0), cfg))
    batch = {"tokens": jnp.asarray([[1, 5, 7, 9]])}
    logits, h = model.outputs(params, batch, cfg)
    trunk = {k: v for k, v in params.items() if k != heads.SCORE_HEAD}
    np.testing.assert_allclose(logits, decoder.apply(trunk, batch, cfg), rtol=1e-6)
    np.testing.assert_allclose(model.apply(params, batch, cfg), logits, rtol=1e-6)
    assert h.shape == (1, 4) and float(jnp.abs(h).max()) == 0.0


def test_calibration_by_hand():
    p = np.array([0.05, 0.15, 0.12, 0.95, 0.91])
    y = np.array([0.0, 1.0, 0.0, 1.0, 1.0])
    got = calibration(p, y)
    # bins: [0, .1): p .05, y 0; [.1, .2): mean p .135, y .5; [.9, 1]: mean p .93, y 1
    want = (1 * 0.05 + 2 * abs(0.135 - 0.5) + 2 * abs(0.93 - 1.0)) / 5
    assert got["ece"] == pytest.approx(want)
    assert [b["count"] for b in got["bins"]] == [1, 2, 2]


def test_wilson_interval_against_scipy():
    from scipy.stats import binomtest

    for k, n in ((0, 13), (6, 13), (13, 13), (48, 60), (1, 1)):
        want = binomtest(k, n).proportion_ci(0.95, "wilson")
        assert wilson(k, n) == pytest.approx([want.low, want.high], abs=1e-6)


def test_baselines_are_fitted_on_the_training_pairs():
    pair = lambda i, chosen, rejected: (i, {"id": f"p{i}", "chosen": chosen, "rejected": rejected})
    # the judge prefers the shorter body in 3 of the 4 training pairs, 1 of the 3 held out
    train = [pair(0, "a", "bb"), pair(1, "a", "bbb"), pair(2, "aa", "b"), pair(3, "", "b")]
    held = [pair(4, "aaa", "b"), pair(5, "a", "bb"), pair(6, "aa", "bb")]
    got = baselines(train, held)
    assert got["length_answer"] == "shorter" and got["held_chosen_shorter"] == pytest.approx(1 / 3)
    assert got["length_baseline"] == pytest.approx((0 + 1 + 0.5) / 3)  # the tie counts half
    firsts = [first_is_chosen(p, i) for i, p in train]
    say_first = sum(firsts) >= len(firsts) / 2
    assert got["majority_answer"] == ("first" if say_first else "second")
    right = [first_is_chosen(p, i) == say_first for i, p in held]
    assert got["majority_baseline"] == pytest.approx(np.mean(right))


def test_split_pairs_is_by_prompt_and_keeps_the_held_out_split():
    pairs = [{"id": f"q{i // 3}", "n": i} for i in range(600)]  # 3 pairs per prompt
    train, val, held = split_pairs(pairs, eval_percent=25, val_percent=20)
    assert sorted(p["n"] for p in train + val + held) == list(range(600))
    assert held == [p for p in pairs if is_held_out(p["id"], 25)]
    ids = [{p["id"] for p in part} for part in (train, val, held)]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert 0.1 < len(val) / (len(val) + len(train)) < 0.3
    assert split_pairs(pairs, 25)[1] == []  # no validation split: held-out ones evaluate


def test_best_step_is_the_highest_validation_accuracy():
    rows = [
        {"step": 0, "model/params_total": 5},
        {"step": 10, "eval/accuracy": 0.7, "eval/loss": 0.6},
        {"step": 10, "train/loss": 0.5},
        {"step": 20, "eval/accuracy": 0.8, "eval/loss": 0.5},
        {"step": 30, "eval/accuracy": 0.8, "eval/loss": 0.4},  # a tie: the lower loss
        {"step": 40, "eval/accuracy": 0.8, "eval/loss": 0.4},  # a full tie: the earlier step
        {"step": 50, "eval/accuracy": 0.75, "eval/loss": 0.3},
    ]
    assert best_step(rows) == 30
    assert best_step(rows[:1]) is None


def test_graded_pairs_pair_best_with_worst_above_the_gap():
    prompts = [{"id": "a", "tokens": [1]}]
    v = lambda body, score: {"body": body, "score": score}
    verdicts = [[v("w", 0.1), v("x", 0.9), v("y", 0.5), v("z", 0.45), v("x", 0.9)]]
    got = graded_pairs(prompts, verdicts, min_gap=0.2)
    assert [(p["chosen"], p["rejected"]) for p in got] == [("x", "w")]  # y vs z: gap 0.05
    assert got[0]["gap"] == pytest.approx(0.8)


def _separable_pairs(n: int) -> list[dict]:
    prompt = [TOK.bos_id, *TOK.encode("def f(a):\n").tolist()]
    out = []
    for i in range(n):
        name = "abcdefgh"[i % 8] * (1 + i % 3)
        out.append(
            {
                "id": f"p{i}",
                "prompt": prompt,
                "chosen": f"    return a + {name}\n",
                "rejected": f"    pass  # {name}\n",
            }
        )
    return out


def reward_config(tmp_path, steps: int, evals: int = 1):
    config = study.stage_configs(study.get_config("preset=smoke"), str(tmp_path / "s"))["reward"]
    config.init_from = ""  # a random trunk: the preference is learned from scratch
    config.data.data_dir = str(tmp_path / "tfds")
    config.data.seq_len = 32
    config.reward.update(pairs=str(tmp_path / "pairs.json"), eval_percent=30, val_percent=30)
    every = steps // evals
    config.train.update(
        steps=steps, lr=3e-3, warmup_steps=0, eval_every=every, ckpt_every=every, log_every=5
    )
    config.train.update(eval_batches=4, peak_flops=1e11, keep_ckpts=evals + 1)
    atomic.write_json(config.reward.pairs, {"pool": {}, "pairs": _separable_pairs(64)})
    return config


def test_a_tiny_reward_model_learns_a_separable_preference(tmp_path):
    config = reward_config(tmp_path, steps=40, evals=4)
    rm_dir = str(tmp_path / "rm")
    summary = train_and_evaluate(config, rm_dir, recipe=recipe_for(config))
    assert summary["eval/accuracy"] >= 0.9  # validation prompts; chance is 0.5
    assert summary["eval/loss"] < np.log(2) - 0.2 and summary["eval/margin"] > 0
    # later stages read the checkpoint of best validation accuracy, every evaluated one kept
    evals = [r for r in read_metrics(f"{rm_dir}/metrics.jsonl") if "eval/accuracy" in r]
    assert [r["step"] for r in evals] == [10, 20, 30, 40]
    best = max(evals, key=lambda r: (r["eval/accuracy"], -r["eval/loss"], -r["step"]))
    assert critic_step(rm_dir) == best["step"]
    want = jax.tree.leaves(load_params(rm_dir, best["step"]))
    for x, y in zip(jax.tree.leaves(critic_params(rm_dir)), want, strict=True):
        np.testing.assert_array_equal(x, y)
    # on the held-out prompts, which it neither trained nor selected on
    ev = reward_eval(config, rm_dir, config.reward.pairs)
    held = [p for p in _separable_pairs(64) if is_held_out(p["id"], 30)]
    assert ev["eval_pairs"] == len(held) and ev["rm_step"] == best["step"]
    assert ev["accuracy"] >= 0.9 and ev["length_answer"] == "longer"  # the hand-made pairs
    assert ev["chosen_longer"] == len(held) and ev["accuracy_chosen_longer"] == ev["accuracy"]
    lo, hi = ev["accuracy_interval"]
    assert lo < ev["accuracy"] <= hi + 1e-9
    shutil.rmtree(f"{rm_dir}/checkpoints/{best['step']}")  # a run that kept too few
    with pytest.raises(ConfigError, match=f"best validation step {best['step']}; train it"):
        critic_step(rm_dir)


def test_reward_and_rl_blocks_fail_in_one_line(tmp_path):
    config = reward_config(tmp_path, steps=2)
    config.reward.eval_percent = 120
    with pytest.raises(ConfigError, match=r"reward.eval_percent=120"):
        recipe_for(config)
    c = study.stage_configs(study.get_config("preset=smoke"), str(tmp_path / "s"))
    ppo = c["ppo_0"]
    ppo.data.seq_len = 100
    with pytest.raises(ValueError, match=r"data.seq_len=100: .* set data.seq_len=144"):
        recipe_for(ppo)
    grpo = c["grpo_0"]
    grpo.rl.group = 3
    with pytest.raises(ValueError, match=r"data.batch_size=8 is not a multiple of rl.group=3"):
        recipe_for(grpo)
    grpo.rl.update(group=2, reward_model="")
    with pytest.raises(ConfigError, match=r"rl.reward_model is empty"):
        recipe_for(grpo)
