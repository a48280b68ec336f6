"""What every batch transform shares: the tokenizer's special ids and the packed-row helpers.

Batch transforms run on the host, in numpy, as a grain `random_map` over the training batches
(train/loop.py): grain derives each batch's generator from the run seed and the batch's index, so
the transformed stream is deterministic and resumes exactly with the data iterator's checkpoint.
Evaluation batches are transformed once with a fixed generator per batch (`eval_rng`), so every
evaluation of every run sees the same corruption. Transforms are plain picklable objects with
`keys` (output key -> rank: 2 for [B, T] arrays, 1 for [B]) and `target_len` (decoder length,
encoder-decoder objectives only).
"""

import dataclasses

import numpy as np

EVAL_SEED = 12345  # the evaluation corruption is the same for every run


@dataclasses.dataclass(frozen=True)
class SpecialIds:
    """Ids a transform needs from the tokenizer (never constants: layouts differ)."""

    pad: int
    bos: int
    eos: int
    mask: int
    sentinels: tuple[int, ...]
    ordinary: np.ndarray  # ids that spell text (bytes_per_token > 0): random replacements


def special_ids(tokenizer, vocab_size: int | None = None) -> SpecialIds:
    """Reads the special ids of `tokenizer` (`vocab_size` bounds the random replacements)."""
    n = getattr(tokenizer, "num_sentinels", 0)
    bpt = np.asarray(tokenizer.bytes_per_token)
    ordinary = np.flatnonzero(bpt > 0).astype(np.int32)
    if vocab_size is not None:
        ordinary = ordinary[ordinary < vocab_size]
    return SpecialIds(
        pad=tokenizer.pad_id,
        bos=tokenizer.bos_id,
        eos=tokenizer.eos_id,
        mask=tokenizer.mask_id,
        sentinels=tuple(tokenizer.sentinel(i) for i in range(n)),
        ordinary=ordinary,
    )


def segments(segment_ids_T: np.ndarray) -> list[tuple[int, int, int]]:
    """(segment id, start, end) of each non-padding segment of one packed row, in order."""
    out, T, t = [], len(segment_ids_T), 0
    while t < T:
        s, start = segment_ids_T[t], t
        while t < T and segment_ids_T[t] == s:
            t += 1
        if s != 0:
            out.append((int(s), start, t))
    return out


def eval_rng(index: int) -> np.random.Generator:
    """The generator of evaluation batch `index`."""
    return np.random.default_rng([EVAL_SEED, index])


def random_composition(total: int, parts: int, rng: np.random.Generator) -> np.ndarray:
    """`parts` positive integers summing to `total`, uniform over all such compositions."""
    cuts = np.sort(rng.choice(np.arange(1, total), size=parts - 1, replace=False))
    return np.diff(np.concatenate([[0], cuts, [total]])).astype(np.int64)
