"""DPO pipeline pieces: pair building, cached reference log-probs, a 2-step sharded DPO train."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from data.tokenizer import ByteTokenizer
from experiments.dpo import get_config
from models import decoder
from parallel.sharding import batch_shardings
from prefs import dpo
from prefs import loss as dpo_loss
from train.loop import Run
from train.metrics import MetricWriter

TOK = ByteTokenizer()
PROMPT = [TOK.bos_id, *TOK.encode("def f(x):\n").tolist()]
BODIES = ["    return x\n", "    return (x\n", "    y = x\n    return y\n", "    return ]\n"]


def _pairs(n: int) -> list[dict]:
    return [
        {"prompt": PROMPT, "chosen": BODIES[(2 * i) % 4], "rejected": BODIES[(2 * i + 1) % 4]}
        for i in range(n)
    ]


def _config():
    config = get_config("size=tiny,steps=2,batch=8,lr=0.01,max_prompt=16,max_new=15")
    config.model.update(n_layers=1, d_model=32, n_heads=2, d_ff=64)
    config.train.warmup_steps, config.train.log_every, config.train.peak_flops = 0, 1, 1e11
    return config


def test_pairs_come_from_a_judge_of_the_same_prompt():
    prompts = [{"id": "a", "header": "H", "tokens": [1]}, {"id": "b", "header": "G", "tokens": [2]}]
    fake = lambda body: {"body": body, "parses": body.startswith("ok")}  # a fake judge's verdicts
    verdicts = [
        [fake("ok1"), fake("bad1"), fake("ok2")],
        [fake("ok3"), fake("ok4")],  # nothing rejected: no pair
    ]
    assert dpo.build_pairs(prompts, verdicts) == [
        {"id": "a", "prompt": [1], "chosen": "ok1", "rejected": "bad1"},
        {"id": "a", "prompt": [1], "chosen": "ok2", "rejected": "bad1"},
    ]
    # preference_pairs asks the judge with the prompt it is given
    seen = []
    judge = lambda p, c: seen.append(p) or c == "y"
    assert dpo_loss.preference_pairs("P", ["y", "n"], judge=judge) == [("y", "n")]
    assert seen == ["P", "P"]


def test_function_body_cuts_at_dedent_stop_or_last_newline():
    text = "    return x\n\nprint(1)\n    junk"
    assert dpo_loss.function_body(text, stopped=False) == ("    return x\n\n", "dedent")
    assert dpo_loss.function_body("    return x", stopped=True) == ("    return x", "stop")
    assert dpo_loss.function_body("    a = 1\n    b = (", stopped=False) == (
        "    a = 1\n",
        "truncated",
    )
    assert dpo_loss.parses("def f(x):\n", "    return x\n\n")


def test_pair_rows_mask_the_body_and_eos():
    row = dpo.pair_row(TOK, PROMPT, "    return x\n", 40)
    n = len(PROMPT) + len("    return x\n") + 1
    assert row["segment_ids"].sum() == n and row["loss_mask"].sum() == n - len(PROMPT)
    masked = row["tokens"][row["loss_mask"] == 1]
    assert TOK.decode(masked[:-1]) == "    return x\n" and masked[-1] == TOK.eos_id


def test_cached_reference_logps_equal_recomputation():
    cfg = _config().model
    params = nn.unbox(decoder.init(jax.random.key(0), cfg))
    arrays = dpo.stack_pairs(TOK, _pairs(3), 32)
    logp_fn = jax.jit(dpo.make_logp_fn(decoder.apply, cfg))
    cached = dpo.reference_logps(params, arrays, logp_fn, batch_size=2)  # 2 calls, one padded
    fwd = jax.jit(lambda p, b: decoder.apply(p, b, cfg))
    apply = lambda p, b, c, rngs=None: fwd(p, b)
    direct = dpo_loss.add_reference_logps(params, arrays, cfg, apply)  # all rows at once
    for side in dpo.SIDES:
        np.testing.assert_allclose(
            cached[f"ref_{side}_logp"], direct[f"ref_{side}_logp"], rtol=1e-5
        )
    # independently: the summed log-softmax of the body tokens of row 0
    side = {k[7:]: v for k, v in arrays.items() if k.startswith("chosen")}
    lp = np.asarray(jax.nn.log_softmax(fwd(params, side)[0], axis=-1))
    toks, mask = arrays["chosen_tokens"][0], arrays["chosen_loss_mask"][0]
    want = sum(lp[t - 1, toks[t]] for t in range(1, 32) if mask[t])
    np.testing.assert_allclose(cached["ref_chosen_logp"][0], want, rtol=1e-5)


@pytest.mark.slow  # builds a Run and compiles the sharded DPO step
def test_two_dpo_steps_raise_the_chosen_minus_rejected_margin(tmp_path):
    config = _config()
    run = Run(config)  # random init (no init_from): policy = reference at step 0
    arrays = dpo.stack_pairs(TOK, _pairs(8), config.data.seq_len)
    logp_fn = dpo.make_logp_fn(decoder.apply, config.model)
    with run.activate():
        jitted = jax.jit(logp_fn)
        arrays |= dpo.reference_logps(run.state.params, arrays, jitted, batch_size=8)
        before = np.mean(np.subtract(*jitted(run.state.params, arrays)))
    shardings = batch_shardings(dpo.PAIR_KEYS, run.mesh, run.rules)
    state = dpo.train_policy(run, arrays, shardings, logp_fn, MetricWriter(str(tmp_path)))
    assert int(state.step) == 2
    spec = state.params["layers"]["wi"].sharding.spec
    assert spec == run.state_shardings.params["layers"]["wi"].spec  # stayed sharded
    with run.activate():
        after = np.mean(np.subtract(*jitted(state.params, arrays)))
    assert after > before + 0.1
