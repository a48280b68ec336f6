"""DPO loss against a hand-worked value; reference caching; the ast judge."""

import math

import jax.numpy as jnp
import numpy as np

from prefs import loss as dpo

V = 5


def _side(tokens, mask):
    t = jnp.asarray([tokens], jnp.int32)
    return {"tokens": t, "segment_ids": jnp.ones_like(t), "loss_mask": jnp.asarray([mask])}


def _logits_for(table):
    """A fake model whose logits at position t are table[token_t] (a bigram model)."""
    table = jnp.asarray(table, jnp.float32)
    return lambda params, batch, cfg, rngs=None: params * table[batch["tokens"]]


def test_loss_matches_hand_computation():
    table = np.log(np.array([[0.1, 0.2, 0.3, 0.2, 0.2]] * V))  # p(next) independent of token
    apply = _logits_for(table)
    chosen = _side([0, 2, 2], [0, 1, 1])  # response tokens: 2, 2 -> log p = 2 log .3
    rejected = _side([0, 1, 4], [0, 0, 1])  # response token: 4 -> log p = log .2
    batch = {f"chosen_{k}": v for k, v in chosen.items()}
    batch |= {f"rejected_{k}": v for k, v in rejected.items()}
    ref_params = jnp.asarray(1.0)
    batch = dpo.add_reference_logps(ref_params, batch, None, apply)
    np.testing.assert_allclose(batch["ref_chosen_logp"], [2 * math.log(0.3)], rtol=1e-6)
    np.testing.assert_allclose(batch["ref_rejected_logp"], [math.log(0.2)], rtol=1e-6)
    loss_fn = dpo.make_loss_fn(None, apply, beta=0.5)
    # the policy equal to the reference: margin 0, loss log 2
    loss, aux = loss_fn(ref_params, batch)
    np.testing.assert_allclose(loss, math.log(2.0), rtol=1e-6)
    # policy = logits scaled by 2: log p_policy = 2 l - logsumexp(2 table)
    lse2 = math.log(sum(p**2 for p in [0.1, 0.2, 0.3, 0.2, 0.2]))
    pc, pr = 2 * (2 * math.log(0.3) - lse2), 2 * math.log(0.2) - lse2
    margin = 0.5 * ((pc - 2 * math.log(0.3)) - (pr - math.log(0.2)))
    loss, aux = loss_fn(jnp.asarray(2.0), batch)
    np.testing.assert_allclose(loss, -math.log(1 / (1 + math.exp(-margin))), rtol=1e-5)
    assert float(aux["accuracy_sum"]) == float(margin > 0)


def test_judge_prefers_completions_that_parse():
    prompt = "def f(x):\n"
    good, bad = "    return x + 1\n", "    return x +\n"
    assert dpo.parses(prompt, good) and not dpo.parses(prompt, bad)
    assert dpo.preference_pairs(prompt, [bad, good, good + "\n", "  )("]) == [
        (good, bad),
        (good + "\n", "  )("),
    ]
    assert dpo.preference_pairs(prompt, [good]) == []
