"""Prefix LM for decoder-only models: bidirectional attention over a prefix, loss on the rest.

Transform (numpy, on the host; objectives/transforms.py): each packed document piece of n >= 2
tokens is split at a uniformly random point c in [1, n - 1]; its first c tokens get `prefix_mask`
1 (the decoder attends bidirectionally among them, models/blocks.mask_bias) and `loss_mask` 0, the
rest are predicted causally. The loss is the causal-LM loss restricted by `loss_mask` (applied to
the predicted token), so no prefix token is ever a target of a position that could see it.
"""

import numpy as np

from objectives.causal_lm import make_loss_fn  # noqa: F401  (the loss is causal LM's, masked)
from objectives.transforms import segments


class PrefixLMTransform:
    """`(batch, rng) -> batch` with `prefix_mask` and `loss_mask` (see the module docstring)."""

    def __init__(self):
        self.keys = {
            k: 2 for k in ("tokens", "segment_ids", "positions", "prefix_mask", "loss_mask")
        }
        self.target_len = None

    def __call__(self, batch: dict, rng: np.random.Generator) -> dict:
        out = {
            k: np.asarray(batch[k]).astype(np.int32) for k in ("tokens", "segment_ids", "positions")
        }
        seg_BT = out["segment_ids"]
        prefix_BT = np.zeros_like(seg_BT)
        for b in range(seg_BT.shape[0]):
            for _, start, end in segments(seg_BT[b]):
                if end - start >= 2:
                    prefix_BT[b, start : start + int(rng.integers(1, end - start))] = 1
        out["prefix_mask"] = prefix_BT
        out["loss_mask"] = ((seg_BT > 0) & (prefix_BT == 0)).astype(np.int32)
        return out
