"""Distillation loss against a hand-written numpy KL / cross-entropy, with masks; the teacher
gets no gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill import loss as distill
from objectives import causal_lm


class _Cfg:
    vocab_size = 6


def _reference(student, teacher, tokens, seg, alpha, tau):
    total, n = 0.0, 0
    B, T, _ = student.shape
    for b in range(B):
        for t in range(T - 1):
            if seg[b, t] == 0 or seg[b, t + 1] != seg[b, t]:
                continue
            s, z = student[b, t].astype(np.float64), teacher[b, t].astype(np.float64)
            ce = np.log(np.sum(np.exp(s))) - s[tokens[b, t + 1]]
            p_t = np.exp(z / tau) / np.sum(np.exp(z / tau))
            p_s = np.exp(s / tau) / np.sum(np.exp(s / tau))
            kl = np.sum(p_t * np.log(p_t / p_s))
            total += alpha * tau**2 * kl + (1 - alpha) * ce
            n += 1
    return total / n, n


@pytest.mark.parametrize("alpha,tau", [(0.5, 2.0), (1.0, 1.0), (0.3, 4.0)])
def test_distill_loss_matches_numpy(alpha, tau):
    rng = np.random.default_rng(0)
    B, T, V = 2, 7, 6
    student = rng.normal(size=(B, T, V)).astype(np.float32)
    teacher = (2 * rng.normal(size=(B, T, V))).astype(np.float32)
    tokens = rng.integers(0, V, (B, T)).astype(np.int32)
    seg = np.array([[1, 1, 1, 2, 2, 2, 2], [1, 1, 1, 1, 1, 0, 0]], np.int32)
    loss_fn = distill.make_loss_fn(
        _Cfg,
        lambda p, b, c, rngs=None: student * p,
        teacher_params=1.0,
        teacher_apply=lambda p, b, c: teacher * p,
        teacher_cfg=_Cfg,
        alpha=alpha,
        temperature=tau,
    )
    batch = {"tokens": tokens, "segment_ids": seg}
    loss, aux = loss_fn(1.0, batch, None)
    ref, n = _reference(student, teacher, tokens, seg, alpha, tau)
    np.testing.assert_allclose(loss, ref, rtol=1e-5)
    assert aux["tokens"] == n == 2 + 3 + 4
    # aux is the student's plain cross-entropy, as the causal-LM objective reports it.
    ce_loss, ce_aux = causal_lm.make_loss_fn(_Cfg, lambda p, b, c, rngs=None: student)(
        None, batch, None
    )
    np.testing.assert_allclose(aux["nll_sum"], ce_aux["nll_sum"], rtol=1e-6)
    # The teacher is frozen: no gradient flows into its parameters.
    g_teacher = jax.grad(
        lambda tp: distill.make_loss_fn(
            _Cfg,
            lambda p, b, c, rngs=None: student * p,
            teacher_params=tp,
            teacher_apply=lambda p, b, c: teacher * p,
            teacher_cfg=_Cfg,
            alpha=alpha,
            temperature=tau,
        )(jnp.float32(1.0), batch, None)[0]
    )(jnp.float32(1.0))
    assert float(g_teacher) == 0.0


def test_alpha_zero_is_cross_entropy_and_bad_settings_fail():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(1, 5, 6)).astype(np.float32)
    batch = {"tokens": rng.integers(0, 6, (1, 5)).astype(np.int32)}
    kw = dict(teacher_params=None, teacher_apply=None, teacher_cfg=_Cfg)
    loss, _ = distill.make_loss_fn(_Cfg, lambda p, b, c, rngs=None: logits, alpha=0.0, **kw)(
        None, batch, None
    )
    ce, _ = causal_lm.make_loss_fn(_Cfg, lambda p, b, c, rngs=None: logits)(None, batch, None)
    np.testing.assert_allclose(loss, ce, rtol=1e-6)
    with pytest.raises(ValueError, match="distill.alpha"):
        distill.make_loss_fn(_Cfg, None, alpha=1.5, **kw)

    class _Other:
        vocab_size = 8

    with pytest.raises(ValueError, match="vocab_size"):
        distill.make_loss_fn(
            _Cfg, None, teacher_params=None, teacher_apply=None, teacher_cfg=_Other
        )
