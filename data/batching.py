"""Batching shared by every data source: rows per process, grain seeds, first-fit packing.

Text (data/pipeline.py), instruction pairs (data/instructions.py) and labelled tasks
(data/tasks.py) all build their batches with these, so the batch contract (data/pipeline.py) and
the process sharding are the same for all of them.
"""

import grain
import ml_collections
import numpy as np

EVAL_SEED = 0  # the evaluation sample is the same for every run


def local_batch_size(data_cfg: ml_collections.ConfigDict, process_count: int) -> int:
    """Returns `data.batch_size // process_count`, raising if it does not divide."""
    if data_cfg.batch_size <= 0 or data_cfg.batch_size % process_count:
        raise ValueError(
            f"data.batch_size={data_cfg.batch_size} must be a positive multiple of the process "
            f"count {process_count}; set data.batch_size to a multiple of {process_count}."
        )
    return data_cfg.batch_size // process_count


def shuffle_seed(seed: int) -> int:
    """Hashes the run seed into grain's shuffle seed (in [0, 2**32)).

    grain seeds epoch e with `seed + e`, so with raw seeds the second epoch of seed s would be
    the first epoch of seed s + 1; hashing keeps the data orders of neighbouring seeds unrelated.
    """
    return int(np.random.SeedSequence(seed).generate_state(1)[0])


class _ToBatch:
    """Renames grain's packing outputs to the batch contract; pads a short batch with zero rows."""

    def __init__(self, rows: int, extra: tuple[str, ...] = ()):
        self._rows, self._extra = rows, extra

    def __call__(self, packed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = {
            "tokens": packed["tokens"],
            "segment_ids": packed["tokens_segment_ids"],
            "positions": packed["tokens_positions"],
            **{k: packed[k] for k in self._extra},  # e.g. SFT's loss_mask
        }
        # Only the final batch of a finite stream is short; zero rows carry no loss.
        missing = self._rows - len(batch["tokens"])
        return {
            k: np.pad(v, ((0, missing), (0, 0))).astype(np.int32, copy=False)
            for k, v in batch.items()
        }


def pack_and_batch(
    pieces: grain.IterDataset, seq_len: int, rows: int, extra: tuple[str, ...] = ()
) -> grain.IterDataset:
    """First-fit packs pieces into rows of `seq_len` and batches `rows` of them; `extra` names
    per-token fields packed beside the tokens."""
    packed = grain.experimental.FirstFitPackIterDataset(
        pieces,
        length_struct={"tokens": seq_len, **dict.fromkeys(extra, seq_len)},
        num_packing_bins=rows,
        # Pieces are already shuffled; row order within a batch does not matter.
        shuffle_bins=False,
    )
    return packed.batch(rows, drop_remainder=False).map(_ToBatch(rows, extra))
