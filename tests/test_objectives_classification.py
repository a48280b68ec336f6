"""Classification loss and accuracy against hand-worked numbers."""

import math

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from objectives import classification


def test_loss_and_accuracy_match_hand_computed_values():
    logits_BC = np.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [5.0, 0.0, 0.0]])
    labels_B = np.array([0, 2, 1, 1])
    segment_ids_BT = np.array([[1, 1], [1, 0], [1, 1], [0, 0]])  # row 3 is padding
    batch = {"tokens": jnp.zeros((4, 2), jnp.int32), "segment_ids": segment_ids_BT}
    batch["labels"] = labels_B
    cfg = ml_collections.ConfigDict({"num_classes": 3})
    loss_fn = classification.make_loss_fn(cfg, lambda p, b, c, rngs=None: {"class_logits": p})
    loss, aux = loss_fn(jnp.asarray(logits_BC), batch)
    # -log softmax by hand: row 0 picks 2 of (2, 0, -1), row 1 picks 0 of (0, 1, 0), row 2 is
    # uniform over 3.
    nll = [
        math.log(math.e**2 + 1 + math.e**-1) - 2,
        math.log(2 + math.e) - 0,
        math.log(3.0),
    ]
    assert float(aux["tokens"]) == 3 and float(aux["bytes"]) == 3
    np.testing.assert_allclose(float(aux["nll_sum"]), sum(nll), rtol=1e-6)
    np.testing.assert_allclose(float(loss), sum(nll) / 3, rtol=1e-6)
    # Row 0 right; row 1 argmax 1 != 2; row 2 ties -> class 0 != 1; row 3 ignored.
    assert float(aux["accuracy_sum"]) == 1

    batch["labels"] = np.array([0, -1, -1, 1])  # negative labels are ignored too
    loss, aux = loss_fn(jnp.asarray(logits_BC), batch)
    assert float(aux["tokens"]) == 1 and float(aux["accuracy_sum"]) == 1
    np.testing.assert_allclose(float(loss), nll[0], rtol=1e-6)


def test_needs_a_classification_head():
    with pytest.raises(ValueError, match="model.num_classes > 0"):
        classification.make_loss_fn(ml_collections.ConfigDict({"num_classes": 0}), None)


def test_loss_accuracy_and_gradient_match_numpy():
    """Random logits over rows with padding tails, packed segments, unlabelled and all-padding
    rows: loss, sums, accuracy and d loss / d logits against numpy."""
    import jax

    rng = np.random.default_rng(0)
    B, T, C = 7, 6, 4
    logits_BC = rng.normal(size=(B, C)).astype(np.float32) * 2
    labels_B = np.array([3, 0, -1, 2, 1, -5, 0], np.int32)
    seg_BT = np.array(
        [
            [1, 1, 1, 1, 0, 0],
            [1, 1, 2, 2, 2, 0],  # packed: the pooled first token is segment 1's
            [1, 1, 1, 1, 1, 1],  # unlabelled
            [0, 0, 0, 0, 0, 0],  # padding row with a label: ignored
            [1, 2, 3, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],  # negative label
            [1, 1, 1, 1, 1, 1],
        ],
        np.int32,
    )
    batch = {"tokens": np.zeros((B, T), np.int32), "segment_ids": seg_BT, "labels": labels_B}
    cfg = ml_collections.ConfigDict({"num_classes": C})
    loss_fn = classification.make_loss_fn(cfg, lambda p, b, c, rngs=None: {"class_logits": p})
    (loss, aux), grad_BC = jax.value_and_grad(loss_fn, has_aux=True)(jnp.asarray(logits_BC), batch)

    x = logits_BC.astype(np.float64)
    p_BC = np.exp(x - x.max(-1, keepdims=True))
    p_BC /= p_BC.sum(-1, keepdims=True)
    real = (labels_B >= 0) & (seg_BT[:, 0] > 0)
    assert real.tolist() == [True, True, False, False, True, False, True]
    nll = -np.log(p_BC[np.arange(B), np.maximum(labels_B, 0)])
    n = real.sum()
    np.testing.assert_allclose(float(aux["nll_sum"]), nll[real].sum(), rtol=1e-5)
    np.testing.assert_allclose(float(loss), nll[real].mean(), rtol=1e-5)
    assert float(aux["tokens"]) == float(aux["bytes"]) == n
    assert float(aux["accuracy_sum"]) == ((x.argmax(-1) == labels_B) & real).sum()
    onehot = np.eye(C)[np.maximum(labels_B, 0)]
    expected_grad = (p_BC - onehot) * real[:, None] / n
    np.testing.assert_allclose(np.asarray(grad_BC), expected_grad, atol=1e-6)
