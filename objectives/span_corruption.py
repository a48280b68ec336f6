"""T5 span corruption for the encoder-decoder family: transform and loss.

Transform (numpy, on the host; objectives/transforms.py): each packed document piece of n tokens
(a trailing EOS is kept out of the noise and re-appended) gets round(n * noise_density) noise
tokens (at least 1, at most n - 1) in round(noise / mean_span) spans (at least 1), their lengths a
uniformly random composition, interleaved with as many non-noise spans (also random, the first
span is non-noise) exactly as in Raffel et al. (2020). Span i is replaced in the input by sentinel
i; the target is `sentinel_0 span_0 sentinel_1 span_1 ... EOS`. Inputs stay in rows of T tokens
(they only shrink); targets go to rows of `target_len` with the same segment ids, so target
segment k belongs to input segment k; a piece whose targets no longer fit is dropped from both.

Loss: cross-entropy on every target token (sentinels and EOS included, as in T5); nats per target
token, bits per byte over the text bytes of the targets (sentinels and EOS carry none).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from objectives.causal_lm import byte_table, token_nll
from objectives.transforms import SpecialIds, random_composition, segments


def span_counts(n: int, noise_density: float, mean_span: float) -> tuple[int, int]:
    """(noise tokens, noise spans) for a piece of n corruptible tokens (n >= 2)."""
    noise = min(max(int(round(n * noise_density)), 1), n - 1)
    spans = max(int(round(noise / mean_span)), 1)
    return noise, min(spans, noise, n - noise)


def default_target_len(seq_len: int, noise_density: float = 0.15, mean_span: float = 3.0) -> int:
    """Target rows long enough for a full row of T tokens (+ slack for packed pieces), / 8."""
    noise, spans = span_counts(seq_len, noise_density, mean_span)
    return -(-(noise + spans + 1 + 4) // 8) * 8


def noise_mask(n: int, noise_density: float, mean_span: float, rng) -> np.ndarray:
    """Boolean [n]: True on noise; spans alternate non-noise, noise, ..., ending with noise."""
    noise, spans = span_counts(n, noise_density, mean_span)
    noise_lens = random_composition(noise, spans, rng)
    keep_lens = random_composition(n - noise, spans, rng)
    lens = np.stack([keep_lens, noise_lens], 1).reshape(-1)
    return np.repeat(np.tile([False, True], spans), lens)


def corrupt(tokens: np.ndarray, is_noise: np.ndarray, ids: SpecialIds):
    """(inputs, targets) of one piece given its noise mask (no EOS handling)."""
    starts = is_noise & ~np.concatenate([[False], is_noise[:-1]])  # first token of each span
    span_index = np.cumsum(starts) - 1
    sentinels = np.asarray(ids.sentinels, np.int32)
    inputs = np.where(starts, sentinels[np.maximum(span_index, 0)], tokens)[~is_noise | starts]
    targets = []
    for i in range(int(starts.sum())):
        targets += [sentinels[i], *tokens[is_noise & (span_index == i)]]
    return inputs.astype(np.int32), np.asarray(targets, np.int32)


class SpanCorruptionTransform:
    """`(batch, rng) -> encoder-decoder batch` (see the module docstring)."""

    def __init__(
        self,
        ids: SpecialIds,
        seq_len: int,
        *,
        noise_density: float = 0.15,
        mean_span: float = 3.0,
        target_len: int = 0,
    ):
        if not 0 < noise_density < 1 or mean_span < 1:
            raise ValueError(
                f"objective_args.noise_density={noise_density} must be in (0, 1) and "
                f"objective_args.mean_span={mean_span} at least 1"
            )
        needed = span_counts(seq_len, noise_density, mean_span)[1]
        if needed > len(ids.sentinels):
            raise ValueError(
                f"span corruption of {seq_len}-token rows needs {needed} sentinels; the "
                f"tokenizer reserves {len(ids.sentinels)}: raise data.num_sentinels"
            )
        self.ids, self.seq_len = ids, seq_len
        self.noise_density, self.mean_span = noise_density, mean_span
        self.target_len = target_len or default_target_len(seq_len, noise_density, mean_span)
        self.keys = {
            f"{side}{suffix}": 2
            for side in ("inputs", "targets")
            for suffix in ("", "_segment_ids", "_positions")
        }

    def __call__(self, batch: dict, rng: np.random.Generator) -> dict:
        tokens_BT, seg_BT = np.asarray(batch["tokens"]), np.asarray(batch["segment_ids"])
        B, T = tokens_BT.shape
        shapes = {"inputs": (B, T), "targets": (B, self.target_len)}
        out = {
            f"{side}{s}": np.zeros(shapes[side], np.int32)
            for side in shapes
            for s in ("", "_segment_ids", "_positions")
        }
        for b in range(B):
            fill = {"inputs": 0, "targets": 0}
            for seg, start, end in segments(seg_BT[b]):
                piece = tokens_BT[b, start:end]
                inputs, targets = self._piece(piece, rng)
                if fill["targets"] + len(targets) > self.target_len:
                    continue  # does not fit: dropped from both sides
                for side, ids in (("inputs", inputs), ("targets", targets)):
                    lo, hi = fill[side], fill[side] + len(ids)
                    out[side][b, lo:hi] = ids
                    out[f"{side}_segment_ids"][b, lo:hi] = seg
                    out[f"{side}_positions"][b, lo:hi] = np.arange(len(ids))
                    fill[side] = hi
        return out

    def _piece(self, piece: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
        eos = piece[-1:] if piece[-1] == self.ids.eos else piece[:0]
        body = piece[: len(piece) - len(eos)]
        if len(body) < 2:  # nothing to corrupt: the decoder only emits EOS
            return piece.astype(np.int32), np.asarray([self.ids.eos], np.int32)
        mask = noise_mask(len(body), self.noise_density, self.mean_span, rng)
        inputs, targets = corrupt(body, mask, self.ids)
        end = np.asarray([self.ids.eos], np.int32)
        return np.concatenate([inputs, eos]).astype(np.int32), np.concatenate([targets, end])


def make_loss_fn(cfg, apply_fn: Callable, *, bytes_per_token: np.ndarray | None = None) -> Callable:
    """Builds `loss_fn(params, batch, rng) -> (loss, aux)` for encoder-decoder training.

    Args:
      cfg: the model config (family 'encdec').
      apply_fn: `apply(params, batch, cfg, rngs=...) -> logits [B, T_out, V]`.
      bytes_per_token: raw bytes per id (None: one per token).
    """
    table_V = byte_table(cfg.vocab_size, bytes_per_token)

    def loss_fn(params, batch: dict, rng: jax.Array | None = None):
        logits_BTV = apply_fn(params, batch, cfg, rngs=rng)
        targets_BT = batch["targets"]
        mask_BT = (batch["targets_segment_ids"] > 0).astype(jnp.float32)
        nll_BT = token_nll(logits_BTV, targets_BT) * mask_BT
        tokens = mask_BT.sum()
        aux = {
            "nll_sum": nll_BT.sum(),
            "tokens": tokens,
            "bytes": (jnp.take(table_V, targets_BT) * mask_BT).sum(),
        }
        return aux["nll_sum"] / jnp.maximum(tokens, 1.0), aux

    return loss_fn
