"""DPO loss and its aux sums against hand-worked values; the ast judge."""

import math

import jax.numpy as jnp
import numpy as np

from prefs import judge
from prefs import loss as dpo

V = 5


def _side(tokens, mask):
    t = jnp.asarray([tokens], jnp.int32)
    return {"tokens": t, "segment_ids": jnp.ones_like(t), "loss_mask": jnp.asarray([mask])}


def _logits_for(table):
    """A fake model whose logits at position t are table[token_t] (a bigram model)."""
    table = jnp.asarray(table, jnp.float32)
    return lambda params, batch, cfg, rngs=None: params * table[batch["tokens"]]


def test_loss_and_aux_match_hand_computation():
    table = np.log(np.array([[0.1, 0.2, 0.3, 0.2, 0.2]] * V))  # p(next) independent of token
    apply = _logits_for(table)
    chosen = _side([0, 2, 2], [0, 1, 1])  # response tokens: 2, 2 -> log p = 2 log .3
    rejected = _side([0, 1, 4], [0, 0, 1])  # response token: 4 -> log p = log .2
    batch = {f"chosen_{k}": v for k, v in chosen.items()}
    batch |= {f"rejected_{k}": v for k, v in rejected.items()}
    ref_params = jnp.asarray(1.0)
    ref_c, ref_r = dpo.make_logp_fn(apply, None)(ref_params, batch)
    np.testing.assert_allclose(ref_c, [2 * math.log(0.3)], rtol=1e-6)
    np.testing.assert_allclose(ref_r, [math.log(0.2)], rtol=1e-6)
    batch |= {"ref_chosen_logp": ref_c, "ref_rejected_logp": ref_r}
    loss_fn = dpo.make_loss_fn(None, apply, beta=0.5)
    # the policy equal to the reference: reward margin 0, loss log 2
    loss, aux = loss_fn(ref_params, batch)
    np.testing.assert_allclose(loss, math.log(2.0), rtol=1e-6)
    assert float(aux["accuracy_sum"]) == 0.0 and float(aux["tokens"]) == 1.0
    np.testing.assert_allclose(aux["margin_sum"], 2 * math.log(0.3) - math.log(0.2), rtol=1e-6)
    # policy = logits scaled by 2: log p_policy = 2 l - logsumexp(2 table)
    lse2 = math.log(sum(p**2 for p in [0.1, 0.2, 0.3, 0.2, 0.2]))
    pc, pr = 2 * (2 * math.log(0.3) - lse2), 2 * math.log(0.2) - lse2
    reward = 0.5 * ((pc - 2 * math.log(0.3)) - (pr - math.log(0.2)))
    loss, aux = loss_fn(jnp.asarray(2.0), batch)
    np.testing.assert_allclose(loss, -math.log(1 / (1 + math.exp(-reward))), rtol=1e-5)
    np.testing.assert_allclose(aux["nll_sum"], loss, rtol=1e-6)
    assert float(aux["accuracy_sum"]) == float(reward > 0)
    np.testing.assert_allclose(aux["margin_sum"], pc - pr, rtol=1e-5)
    np.testing.assert_allclose(aux["reward_margin_sum"], reward, rtol=1e-5)
    # a padding row (weight 0) beside the pair changes no sum and no mean
    both = {k: jnp.concatenate([v, v]) for k, v in batch.items()}
    both["weight"] = jnp.asarray([1, 0])
    loss2, aux2 = loss_fn(jnp.asarray(2.0), both)
    np.testing.assert_allclose(loss2, loss, rtol=1e-6)
    for k in aux:
        np.testing.assert_allclose(aux2[k], aux[k], rtol=1e-6)


def test_judge_prefers_completions_that_parse():
    prompt = "def f(x):\n"
    good, bad = "    return x + 1\n", "    return x +\n"
    assert judge.parses(prompt, good) and not judge.parses(prompt, bad)
    assert judge.preference_pairs(prompt, [bad, good, good + "\n", "  )("]) == [
        (good, bad),
        (good + "\n", "  )("),
    ]
    assert judge.preference_pairs(prompt, [good]) == []
