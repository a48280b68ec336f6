"""DPO on the one loop: pairs, reference scoring, the pairs data source, the recipe's step."""

import os
import types

import flax.linen as nn
import jax
import numpy as np
import pytest

import objectives
from common import atomic
from data.tokenizer import ByteTokenizer
from experiments import dpo as study
from models import decoder
from prefs import judge, pairs
from prefs import loss as dpo_loss
from studies.recipes import recipe_for
from train.loop import Run
from train.validate import ConfigError

TOK = ByteTokenizer()
PROMPT = [TOK.bos_id, *TOK.encode("def f(x):\n").tolist()]
BODIES = ["    return x\n", "    return (x\n", "    y = x\n    return y\n", "    return ]\n"]


def hand_pairs(n: int, ref: bool = True) -> list[dict]:
    """`n` pairs of one header under `n` prompt ids, with made-up reference log-probs."""
    out = []
    for i in range(n):
        p = {"id": f"p{i}", "prompt": PROMPT, "chosen": BODIES[(2 * i) % 4]}
        p["rejected"] = BODIES[(2 * i + 1) % 4]
        if ref:
            p |= {"ref_chosen_logp": -40.0 - 0.5 * i, "ref_rejected_logp": -45.0 + 0.7 * i}
        out.append(p)
    return out


def policy_config(tmp_path, n_pairs: int = 40, steps: int = 2):
    """The study's `dpo` stage config, shrunk: a random-init 1-layer policy on hand-made pairs."""
    config = study.stage_configs(
        study.get_config(f"steps={steps},batch=8,lr=0.01,max_prompt=16,max_new=15"),
        str(tmp_path / "study"),
    )["dpo"]
    config.model.update(n_layers=1, d_model=32, n_heads=2, d_ff=64)
    config.init_from = ""
    config.data.data_dir = str(tmp_path / "tfds")
    config.dpo.eval_percent = 50
    config.dpo.pairs = str(tmp_path / "pairs.json")
    config.train.update(warmup_steps=0, log_every=1, peak_flops=1e11, eval_batches=2)
    atomic.write_json(config.dpo.pairs, {"pool": {}, "pairs": hand_pairs(n_pairs)})
    return config


def test_pairs_come_from_a_judge_of_the_same_prompt():
    prompts = [{"id": "a", "header": "H", "tokens": [1]}, {"id": "b", "header": "G", "tokens": [2]}]
    fake = lambda body: {"body": body, "parses": body.startswith("ok")}  # a fake judge's verdicts
    verdicts = [
        [fake("ok1"), fake("bad1"), fake("ok2")],
        [fake("ok3"), fake("ok4")],  # nothing rejected: no pair
    ]
    assert judge.build_pairs(prompts, verdicts) == [
        {"id": "a", "prompt": [1], "chosen": "ok1", "rejected": "bad1"},
        {"id": "a", "prompt": [1], "chosen": "ok2", "rejected": "bad1"},
    ]
    seen = []  # preference_pairs asks the judge with the prompt it is given
    fake_judge = lambda p, c: seen.append(p) or c == "y"
    assert judge.preference_pairs("P", ["y", "n"], judge=fake_judge) == [("y", "n")]
    assert seen == ["P", "P"]


def test_function_body_cuts_at_dedent_stop_or_last_newline():
    text = "    return x\n\nprint(1)\n    junk"
    assert judge.function_body(text, stopped=False) == ("    return x\n\n", "dedent")
    assert judge.function_body("    return x", stopped=True) == ("    return x", "stop")
    assert judge.function_body("    a = 1\n    b = (", stopped=False) == (
        "    a = 1\n",
        "truncated",
    )
    assert judge.parses("def f(x):\n", "    return x\n\n")


def test_pair_rows_mask_the_body_and_eos():
    row = pairs.pair_row(TOK, PROMPT, "    return x\n", 40)
    n = len(PROMPT) + len("    return x\n") + 1
    assert row["segment_ids"].sum() == n and row["loss_mask"].sum() == n - len(PROMPT)
    masked = row["tokens"][row["loss_mask"] == 1]
    assert TOK.decode(masked[:-1]) == "    return x\n" and masked[-1] == TOK.eos_id


def _numpy_logp(logits_BTV, tokens_BT, mask_BT):
    """Summed log-softmax of the masked next tokens, in numpy."""
    x = np.asarray(logits_BTV, np.float64)
    lp = x - x.max(-1, keepdims=True)
    lp -= np.log(np.exp(lp).sum(-1, keepdims=True))
    picked = np.take_along_axis(lp[:, :-1], tokens_BT[:, 1:, None], -1)[..., 0]
    return (picked * (mask_BT[:, 1:] != 0)).sum(-1)


def test_reference_logps_in_batches_equal_a_numpy_computation():
    cfg = study.get_config("").model
    cfg.update(n_layers=1, d_model=32, n_heads=2, d_ff=64)
    params = nn.unbox(decoder.init(jax.random.key(0), cfg))
    arrays = pairs.stack_pairs(TOK, hand_pairs(3, ref=False), 32)
    logp_fn = jax.jit(dpo_loss.make_logp_fn(decoder.apply, cfg))
    cached = pairs.reference_logps(params, arrays, logp_fn, batch_size=2)  # 2 calls, one padded
    for s in dpo_loss.SIDES:
        side = dpo_loss.side(arrays, s)
        logits = jax.jit(lambda p, b: decoder.apply(p, b, cfg))(params, side)
        want = _numpy_logp(logits, side["tokens"], side["loss_mask"])
        np.testing.assert_allclose(cached[f"ref_{s}_logp"], want, rtol=1e-5)


def test_pairs_source_gives_each_process_its_block_and_resumes():
    n, B = 13, 4
    arrays = {"pair": np.arange(n), "x": np.arange(n) * 10}
    whole = pairs.make_train_iterator(arrays, B, seed=3)
    batches = [next(whole)["pair"] for _ in range(7)]
    stream = np.concatenate(batches)
    assert sorted(stream[:n]) == list(range(n))  # an epoch is a permutation of the pairs
    assert sorted(stream[n : 2 * n]) == list(range(n))
    assert not np.array_equal(stream[:n], stream[n : 2 * n])  # reshuffled
    halves = [pairs.make_train_iterator(arrays, B, seed=3, index=i, count=2) for i in (0, 1)]
    for want in batches:  # the global batches do not depend on the process count
        got = [next(h) for h in halves]
        np.testing.assert_array_equal(np.concatenate([g["pair"] for g in got]), want)
        np.testing.assert_array_equal(got[1]["x"], want[2:] * 10)
    it = pairs.make_train_iterator(arrays, B, seed=3, index=1, count=2)
    for _ in range(3):
        next(it)
    state = it.get_state()  # what train/checkpoint.py saves with the train state
    resumed = pairs.make_train_iterator(arrays, B, seed=3, index=1, count=2)
    resumed.set_state(state)
    for want in batches[3:]:
        np.testing.assert_array_equal(next(resumed)["pair"], want[2:])


def test_data_source_splits_held_out_prompts_and_refuses_too_few(tmp_path):
    config = policy_config(tmp_path)
    run = types.SimpleNamespace(config=config, tokenizer=TOK)
    train_iter, evals = pairs.data_source(run, 0, 1)
    held = {p["id"] for p in hand_pairs(40) if pairs.is_held_out(p["id"], 50)}
    assert 8 <= len(held) <= 32
    batch = next(train_iter)
    assert set(batch) == set(dpo_loss.PAIR_KEYS) and batch["chosen_tokens"].shape == (8, 32)
    want = [p["ref_chosen_logp"] for p in hand_pairs(40) if p["id"] in held][:8]
    np.testing.assert_allclose(evals[0]["ref_chosen_logp"], want)
    assert len(evals) == 2
    config.train.eval_batches = 100  # every held-out pair, the last batch padded with weight 0
    _, evals = pairs.data_source(run, 0, 1)
    assert len(evals) == -(-len(held) // 8)
    assert sum(int(b["weight"].sum()) for b in evals) == len(held)
    assert evals[-1]["weight"].tolist() == sorted(evals[-1]["weight"].tolist(), reverse=True)
    for p in hand_pairs(40):  # no training row comes from a held-out prompt
        if p["id"] in held:
            assert p["ref_chosen_logp"] not in batch["ref_chosen_logp"]
    config.dpo.eval_percent = 0
    with pytest.raises(ValueError, match="0 held-out pairs, fewer than 1"):
        pairs.data_source(run, 0, 1)


def test_dpo_block_is_checked_from_its_declaration(tmp_path):
    config = policy_config(tmp_path)
    config.dpo.beta = 0.0
    with pytest.raises(ConfigError, match=r"dpo.beta=0.0 must be above 0.0"):
        recipe_for(config)
    config.dpo.beta = 0.1
    config.dpo.betta = 0.1
    with pytest.raises(ConfigError, match="dpo.betta is not a declared config field"):
        recipe_for(config)


def test_the_recipe_step_logs_accuracy_and_margins_of_a_numpy_computation(tmp_path):
    config = policy_config(tmp_path)
    recipe = recipe_for(config)
    run = Run(config, recipe=recipe)
    params = jax.device_get(run.state.params)
    train_iter, _ = recipe.data(run, 0, 1)
    batch = next(train_iter)
    with run.activate():
        _, metrics = run.train_step(run.state, run.global_batch(batch), run.schedule_args)
    logged = objectives.summarize(jax.device_get(metrics))  # what the loop writes as train/*
    fwd = jax.jit(lambda p, b: decoder.apply(p, b, config.model))
    logp = {}
    for s in dpo_loss.SIDES:
        side = dpo_loss.side(batch, s)
        logp[s] = _numpy_logp(fwd(params, side), side["tokens"], side["loss_mask"])
    beta = config.dpo.beta
    reward = beta * (
        (logp["chosen"] - batch["ref_chosen_logp"])
        - (logp["rejected"] - batch["ref_rejected_logp"])
    )
    assert 0 < (reward > 0).sum() < 8  # the made-up references give both outcomes
    np.testing.assert_allclose(logged["accuracy"], np.mean(reward > 0))
    np.testing.assert_allclose(
        logged["margin"], np.mean(logp["chosen"] - logp["rejected"]), rtol=1e-4
    )
    np.testing.assert_allclose(logged["reward_margin"], np.mean(reward), rtol=1e-4)
    np.testing.assert_allclose(logged["loss"], np.mean(np.logaddexp(0, -reward)), rtol=1e-4)


def test_a_bad_dpo_field_of_the_study_exits_2_before_anything_is_written(tmp_path, capsys):
    from launch.run import EXIT_BAD_INPUT, cli

    workdir = str(tmp_path / "study")
    argv = [
        "run.py",
        "--config=experiments/dpo.py",
        "--config.dpo.top_p=1.5",
        f"--workdir={workdir}",
    ]
    assert cli(argv) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert err == "error: stage dpo: dpo.top_p=1.5 must be at most 1.0; change it", err
    assert not os.path.exists(workdir)
