"""RL against a reward model (prefs/rl_loss.py, prefs/rollout.py, prefs/rl_source.py): advantages
and the PPO loss against independent numpy references, rollout rows, the on-policy iterator's
checkpointed state, and the `rl` block's one-line errors."""

import types

import jax.numpy as jnp
import numpy as np
import pytest

from prefs import rl_loss, rollout
from prefs.rl_recipe import default_rl_config
from prefs.rl_source import OnPolicyIterator


def _gae_reference(r, v, m, gamma, lam):
    """GAE by the textbook loop, row by row over the actions only."""
    adv = np.zeros_like(r)
    for b in range(r.shape[0]):
        acts = np.flatnonzero(m[b])
        running = 0.0
        for i in reversed(range(len(acts))):
            t = acts[i]
            next_v = v[b, acts[i + 1]] if i + 1 < len(acts) else 0.0
            delta = r[b, t] + gamma * next_v - v[b, t]
            running = delta + gamma * lam * running
            adv[b, t] = running
    return adv, (adv + v) * m


def test_gae_by_hand():
    # prompt column 0, actions 1..3, padding at 4
    r = np.array([[0.0, 0.0, 0.0, 1.0, 0.0]], np.float32)
    v = np.array([[0.0, 0.5, 0.2, 0.4, 0.0]], np.float32)
    m = np.array([[0, 1, 1, 1, 0]], np.float32)
    adv, ret = rl_loss.gae(jnp.asarray(r), jnp.asarray(v), jnp.asarray(m), 1.0, 0.5)
    # delta3 = 1 - 0.4 = 0.6; delta2 = 0.4 - 0.2 = 0.2, A2 = 0.2 + 0.5 * 0.6 = 0.5;
    # delta1 = 0.2 - 0.5 = -0.3, A1 = -0.3 + 0.5 * 0.5 = -0.05
    np.testing.assert_allclose(adv, [[0.0, -0.05, 0.5, 0.6, 0.0]], atol=1e-6)
    np.testing.assert_allclose(ret, [[0.0, 0.45, 0.7, 1.0, 0.0]], atol=1e-6)


def test_gae_matches_the_loop_on_random_rows():
    rng = np.random.default_rng(0)
    B, T = 4, 9
    r, v = rng.normal(size=(2, B, T)).astype(np.float32)
    m = np.zeros((B, T), np.float32)
    for b, (lo, hi) in enumerate([(2, 9), (3, 5), (1, 2), (4, 8)]):
        m[b, lo:hi] = 1
    r, v = r * m, v * m
    want = _gae_reference(r, v, m, 0.9, 0.8)
    got = rl_loss.gae(jnp.asarray(r), jnp.asarray(v), jnp.asarray(m), 0.9, 0.8)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(g), w, rtol=1e-5, atol=1e-6)


def test_token_rewards_penalise_kl_and_pay_the_score_last():
    kl = jnp.asarray([[0.0, 0.5, -0.2, 1.0]])
    m = jnp.asarray([[0.0, 1.0, 1.0, 0.0]])
    got = rl_loss.token_rewards(jnp.asarray([2.0]), kl, m, beta=0.1)
    np.testing.assert_allclose(got, [[0.0, -0.05, 0.02 + 2.0, 0.0]], atol=1e-6)


def test_group_advantages_against_numpy():
    r = np.array([1.0, 3.0, 2.0, 2.0, 0.0, 4.0], np.float32)
    got = rl_loss.group_advantages(jnp.asarray(r), 3)
    g = r.reshape(2, 3)
    want = ((g - g.mean(1, keepdims=True)) / (g.std(1, keepdims=True) + 1e-6)).reshape(-1)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(got[:3], [-1.2247, 1.2247, 0.0], atol=1e-4)
    unscaled = rl_loss.group_advantages(jnp.asarray(r), 2, scale=False)
    np.testing.assert_allclose(unscaled, [-1, 1, 0, 0, -2, 2])


def test_whiten_over_masked_entries():
    x = jnp.asarray([[9.0, 1.0, 3.0], [9.0, 5.0, 9.0]])
    m = jnp.asarray([[0.0, 1.0, 1.0], [0.0, 1.0, 0.0]])
    got = np.asarray(rl_loss.whiten(x, m))
    vals = np.array([1.0, 3.0, 5.0])
    want = (vals - 3.0) / vals.std()
    np.testing.assert_allclose(got[m > 0], want, rtol=1e-4)
    assert (got[np.asarray(m) == 0] == 0).all()


def _ppo_reference(logp, old, adv, v, old_v, ret, m, clip, vclip, vf):
    ratio = np.exp(logp - old)
    pg = np.maximum(-adv * ratio, -adv * np.clip(ratio, 1 - clip, 1 + clip))
    v_c = old_v + np.clip(v - old_v, -vclip, vclip)
    vl = 0.5 * np.maximum((v - ret) ** 2, (v_c - ret) ** 2)
    return ((pg + vf * vl) * m).sum() / m.sum(), ((np.abs(ratio - 1) > clip) * m).sum()


def test_ppo_loss_against_numpy():
    rng = np.random.default_rng(1)
    B, T, V = 2, 5, 7
    logits = rng.normal(size=(B, T, V)).astype(np.float32)
    h = rng.normal(size=(B, T)).astype(np.float32)
    tokens = rng.integers(0, V, size=(B, T)).astype(np.int32)
    m = np.array([[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]], np.float32)
    temp = 0.7
    lp = logits / temp
    lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
    logp = np.zeros((B, T), np.float32)
    logp[:, 1:] = np.take_along_axis(lp[:, :-1], tokens[:, 1:, None], -1)[..., 0]
    values = np.zeros((B, T), np.float32)
    values[:, 1:] = h[:, :-1]
    old = logp + rng.normal(scale=1.0, size=(B, T)).astype(np.float32)  # some ratios clip
    adv, old_v, ret = rng.normal(size=(3, B, T)).astype(np.float32)
    batch = {
        "tokens": tokens,
        "loss_mask": m.astype(np.int32),
        "old_logp": old * m,
        "old_values": old_v,
        "advantages": adv,
        "returns": ret,
        "score": np.array([1.0, -1.0], np.float32),
        "kl": np.array([0.5, 0.25], np.float32),
        "length": np.array([3.0, 2.0], np.float32),
    }
    rl = default_rl_config()
    rl.update(temperature=temp, clip=0.2, value_clip=0.3, vf_coef=0.5)
    fake = lambda params, b, cfg, rngs=None: (jnp.asarray(logits), jnp.asarray(h))
    loss, aux = rl_loss.make_loss_fn(fake, None, rl)(None, batch, None)
    want, clipped = _ppo_reference(logp, old * m, adv, values, old_v, ret, m, 0.2, 0.3, 0.5)
    assert float(loss) == pytest.approx(want, rel=1e-5)
    assert float(aux["clip_fraction_sum"]) == clipped > 0
    assert float(aux["tokens"]) == 5 and float(aux["score_sum"]) == 0.0
    assert float(aux["kl_sum"]) == pytest.approx(0.75) and float(aux["length_count"]) == 2
    rl.algo = "grpo"  # no value loss
    loss, aux = rl_loss.make_loss_fn(fake, None, rl)(None, batch, None)
    want, _ = _ppo_reference(logp, old * m, adv, values, old_v, ret, m, 0.2, 0.3, 0.0)
    assert float(loss) == pytest.approx(want, rel=1e-5) and float(aux["value_loss_sum"]) == 0


def test_response_rows_mask_up_to_the_first_eos():
    EOS, PAD = 2, 0
    prompts = jnp.asarray([[PAD, 5, 6], [7, 8, 9]])
    pad = jnp.asarray([1, 0])
    response = jnp.asarray([[4, EOS, PAD, PAD], [4, 4, 4, 4]])
    rows = rollout.response_rows(prompts, pad, response, EOS)
    np.testing.assert_array_equal(rows["tokens"][0], [PAD, 5, 6, 4, EOS, PAD, PAD])
    np.testing.assert_array_equal(rows["loss_mask"], [[0, 0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1, 1]])
    np.testing.assert_array_equal(rows["segment_ids"][0], [0, 1, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(rows["positions"][0], [0, 0, 1, 2, 3, 4, 5])
    np.testing.assert_array_equal(rows["length"], [2, 4])


class _FakeRollouts:
    """Rollout r from params p: one array holding 100 r + p."""

    def __init__(self):
        self.calls = []

    def train_batch(self, params, r):
        self.calls.append((params, r))
        return {"x": np.full((2,), 100 * r + params, np.float32)}


def test_the_iterator_resamples_every_epochs_batches_and_restores_between_rollouts():
    it = OnPolicyIterator(_FakeRollouts(), epochs=3)
    seen = []
    for step in range(4):
        it.see(types.SimpleNamespace(params=step))
        seen.append(float(next(it)["x"][0]))
    assert seen == [0.0, 0.0, 0.0, 103.0]  # rollout 0 from params 0, rollout 1 from params 3
    it.see(types.SimpleNamespace(params=4))
    next(it)
    saved = it.get_state()
    again = OnPolicyIterator(_FakeRollouts(), epochs=3)
    again.set_state(saved)
    again.see(types.SimpleNamespace(params=99))  # mid-rollout: the saved rows, not params 99
    assert float(next(again)["x"][0]) == 103.0 and again.rollouts.calls == []
    again.see(types.SimpleNamespace(params=6))
    assert float(next(again)["x"][0]) == 206.0
    with pytest.raises(RuntimeError, match="shows it a state"):
        next(OnPolicyIterator(_FakeRollouts(), epochs=3))  # a rollout is due, no state seen
