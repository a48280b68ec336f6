"""Masked-LM objective (BERT) with optional next-sentence prediction: transform and loss.

Transform (numpy, on the host; objectives/transforms.py says where it runs): each ordinary token
(not padding, BOS or EOS) is chosen with probability `mask_rate` (0.15); a chosen token becomes the
mask id with probability 0.8, a uniformly random ordinary token with 0.1, and stays itself with
0.1. `targets` keeps the original tokens and `loss_mask` marks the chosen positions: the loss is
the cross-entropy at chosen positions only (nats per chosen token; bits per byte over their text
bytes).

With `nsp`, each row is first rebuilt as one sentence pair: the row's first segment is cut at a
random point into A and B; with probability 0.5 B is kept (label 0, "is next", Hugging Face's
convention) and otherwise replaced by a span of another row's first segment (label 1, "random").
`token_type_ids` is 0 on A and 1 on B; the pair is one segment. The loss adds the mean NSP
cross-entropy to the mean masked-LM one (BERT); `aux` reports the MLM sums as `nll_sum` etc. and
the NSP sums as `nsp_nll_sum`, `nsp_accuracy_sum` over `nsp_nll_count` = `nsp_accuracy_count`
examples.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from objectives.causal_lm import byte_table, token_nll
from objectives.transforms import SpecialIds


class MaskedLMTransform:
    """`(batch, rng) -> batch` for masked-LM (see the module docstring)."""

    def __init__(
        self,
        ids: SpecialIds,
        *,
        mask_rate: float = 0.15,
        mask_frac: float = 0.8,
        random_frac: float = 0.1,
        nsp: bool = False,
    ):
        if not 0 < mask_rate < 1 or mask_frac < 0 or random_frac < 0 or mask_frac + random_frac > 1:
            raise ValueError(
                "objective_args.mask_rate must be in (0, 1) and mask_frac + random_frac <= 1; "
                f"got {mask_rate}, {mask_frac}, {random_frac}"
            )
        self.ids, self.nsp = ids, nsp
        self.rates = (mask_rate, mask_frac, random_frac)
        self.keys = {"tokens": 2, "segment_ids": 2, "positions": 2, "targets": 2, "loss_mask": 2}
        if nsp:
            self.keys |= {"token_type_ids": 2, "nsp_labels": 1}
        self.target_len = None

    def __call__(self, batch: dict, rng: np.random.Generator) -> dict:
        batch = {k: np.asarray(v) for k, v in batch.items()}
        if self.nsp:
            batch = self._pairs(batch, rng)
        tokens_BT, seg_BT = batch["tokens"], batch["segment_ids"]
        rate, mask_frac, random_frac = self.rates
        special = np.isin(tokens_BT, [self.ids.pad, self.ids.bos, self.ids.eos])
        chosen_BT = (seg_BT > 0) & ~special & (rng.random(tokens_BT.shape) < rate)
        u_BT = rng.random(tokens_BT.shape)
        random_BT = rng.choice(self.ids.ordinary, size=tokens_BT.shape).astype(tokens_BT.dtype)
        corrupted = np.where(chosen_BT & (u_BT < mask_frac), self.ids.mask, tokens_BT)
        swap_BT = chosen_BT & (u_BT >= mask_frac) & (u_BT < mask_frac + random_frac)
        corrupted = np.where(swap_BT, random_BT, corrupted)
        out = dict(batch, tokens=corrupted.astype(np.int32), targets=tokens_BT.astype(np.int32))
        out["loss_mask"] = chosen_BT.astype(np.int32)
        return {k: out[k].astype(np.int32) for k in self.keys}

    def _pairs(self, batch: dict, rng: np.random.Generator) -> dict:
        tokens_BT, seg_BT = batch["tokens"], batch["segment_ids"]
        B, T = tokens_BT.shape
        firsts = []
        for b in range(B):
            n = int(np.argmax(seg_BT[b] != seg_BT[b, 0])) or T if seg_BT[b, 0] else 0
            firsts.append(tokens_BT[b, :n])
        out = {k: np.zeros((B, T), np.int32) for k in ("tokens", "segment_ids", "positions")}
        out["token_type_ids"] = np.zeros((B, T), np.int32)
        out["nsp_labels"] = np.zeros((B,), np.int32)
        for b, seq in enumerate(firsts):
            n = len(seq)
            if n < 4:  # too short to pair: leave the row as padding (no loss)
                continue
            cut = int(rng.integers(n // 4, 3 * n // 4)) if n >= 8 else n // 2
            a, nxt = seq[:cut], seq[cut:]
            if rng.random() < 0.5 or B == 1:
                second, label = nxt, 0
            else:
                other = firsts[(b + int(rng.integers(1, B))) % B]
                if len(other) < 2:
                    second, label = nxt, 0
                else:
                    start = int(rng.integers(0, max(len(other) - len(nxt), 0) + 1))
                    second, label = other[start : start + len(nxt)], 1
            pair = np.concatenate([a, second])
            m = len(pair)
            out["tokens"][b, :m] = pair
            out["segment_ids"][b, :m] = 1
            out["positions"][b, :m] = np.arange(m)
            out["token_type_ids"][b, len(a) : m] = 1
            out["nsp_labels"][b] = label
        return out


def make_loss_fn(cfg, apply_fn: Callable, *, bytes_per_token: np.ndarray | None = None) -> Callable:
    """Builds `loss_fn(params, batch, rng) -> (loss, aux)` for masked-LM (+ NSP) training.

    Args:
      cfg: the model config (an encoder; `nsp_head` adds the NSP term when the batch has labels).
      apply_fn: `apply(params, batch, cfg, rngs=...) -> {'logits': [B, T, V], ...}`.
      bytes_per_token: raw bytes per id (None: one per token).
    """
    table_V = byte_table(cfg.vocab_size, bytes_per_token)

    def loss_fn(params, batch: dict, rng: jax.Array | None = None):
        out = apply_fn(params, batch, cfg, rngs=rng)
        mask_BT = batch["loss_mask"].astype(jnp.float32)
        nll_BT = token_nll(out["logits"], batch["targets"]) * mask_BT
        tokens = mask_BT.sum()
        aux = {
            "nll_sum": nll_BT.sum(),
            "tokens": tokens,
            "bytes": (jnp.take(table_V, batch["targets"]) * mask_BT).sum(),
        }
        loss = aux["nll_sum"] / jnp.maximum(tokens, 1.0)
        if cfg.nsp_head and "nsp_labels" in batch:
            real_B = (batch["segment_ids"][:, 0] > 0).astype(jnp.float32)
            nsp_B = token_nll(out["nsp_logits"], batch["nsp_labels"]) * real_B
            n = jnp.maximum(real_B.sum(), 1.0)
            correct_B = (out["nsp_logits"].argmax(-1) == batch["nsp_labels"]) * real_B
            aux |= {
                "nsp_nll_sum": nsp_B.sum(),
                "nsp_nll_count": n,
                "nsp_accuracy_sum": correct_B.sum(),
                "nsp_accuracy_count": n,
            }
            loss = loss + nsp_B.sum() / n
        return loss, aux

    return loss_fn
