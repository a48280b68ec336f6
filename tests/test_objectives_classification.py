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
    assert float(aux["correct"]) == 1

    batch["labels"] = np.array([0, -1, -1, 1])  # negative labels are ignored too
    loss, aux = loss_fn(jnp.asarray(logits_BC), batch)
    assert float(aux["tokens"]) == 1 and float(aux["correct"]) == 1
    np.testing.assert_allclose(float(loss), nll[0], rtol=1e-6)


def test_needs_a_classification_head():
    with pytest.raises(ValueError, match="model.num_classes > 0"):
        classification.make_loss_fn(ml_collections.ConfigDict({"num_classes": 0}), None)
