"""Tokenizers: a small common surface, the byte-level tokenizer and a factory by name.

Id layout of `ByteTokenizer` (unpadded vocabulary; the model may pad it further):

    0 PAD | 1 BOS | 2 EOS | 3 MASK | 4 .. 4+num_sentinels-1 sentinels | byte b -> b + offset

with `offset = 4 + num_sentinels`.
"""

from collections.abc import Sequence
from typing import Protocol

import numpy as np

PAD_ID, BOS_ID, EOS_ID, MASK_ID = 0, 1, 2, 3
_NUM_SPECIAL = 4


class Tokenizer(Protocol):
    """What the pipeline, objectives and losses use; a SentencePiece tokenizer provides the same."""

    @property
    def vocab_size(self) -> int: ...

    @property
    def pad_id(self) -> int: ...

    @property
    def bos_id(self) -> int: ...

    @property
    def eos_id(self) -> int: ...

    @property
    def mask_id(self) -> int: ...

    @property
    def bytes_per_token(self) -> np.ndarray: ...

    def sentinel(self, i: int) -> int: ...

    def encode(self, text: str | bytes) -> np.ndarray: ...

    def decode(self, ids: Sequence[int] | np.ndarray) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as tokens, after 4 special ids and `num_sentinels` sentinel ids."""

    def __init__(self, num_sentinels: int = 100):
        if num_sentinels < 0:
            raise ValueError(f"data.num_sentinels must be >= 0, got {num_sentinels}.")
        self._num_sentinels = num_sentinels
        self._offset = _NUM_SPECIAL + num_sentinels
        bytes_per_token_V = np.zeros(self._offset + 256, dtype=np.int32)
        bytes_per_token_V[self._offset :] = 1
        bytes_per_token_V.setflags(write=False)
        self._bytes_per_token_V = bytes_per_token_V

    @property
    def vocab_size(self) -> int:
        """Unpadded vocabulary size: specials + sentinels + 256 bytes."""
        return self._offset + 256

    @property
    def offset(self) -> int:
        """Id of byte 0."""
        return self._offset

    @property
    def num_sentinels(self) -> int:
        return self._num_sentinels

    @property
    def pad_id(self) -> int:
        return PAD_ID

    @property
    def bos_id(self) -> int:
        return BOS_ID

    @property
    def eos_id(self) -> int:
        return EOS_ID

    @property
    def mask_id(self) -> int:
        return MASK_ID

    @property
    def bytes_per_token(self) -> np.ndarray:
        """int32[vocab_size]: raw text bytes each id stands for (1 per byte id, 0 for specials)."""
        return self._bytes_per_token_V

    def sentinel(self, i: int) -> int:
        """Returns the id of sentinel `i` (0-based)."""
        if not 0 <= i < self._num_sentinels:
            raise ValueError(f"Sentinel index {i} out of range [0, {self._num_sentinels}).")
        return _NUM_SPECIAL + i

    def encode(self, text: str | bytes) -> np.ndarray:
        """Returns int32 ids of the UTF-8 bytes of `text` (no BOS/EOS added)."""
        raw = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        # One vectorised add instead of a Python loop over bytes.
        return np.frombuffer(raw, dtype=np.uint8).astype(np.int32) + self._offset

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Returns the text of the byte ids in `ids`; special and out-of-range ids are dropped."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        byte_ids = ids[(ids >= self._offset) & (ids < self._offset + 256)] - self._offset
        return byte_ids.astype(np.uint8).tobytes().decode("utf-8", errors="replace")


_TOKENIZERS = {"byte": ByteTokenizer}


def get_tokenizer(name: str, *, num_sentinels: int = 100) -> Tokenizer:
    """Returns the tokenizer called `name` (the `data.tokenizer` config field).

    Args:
      name: tokenizer name; one of `_TOKENIZERS`.
      num_sentinels: sentinel ids to reserve (`data.num_sentinels`).

    Raises:
      ValueError: for an unknown name.
    """
    if name not in _TOKENIZERS:
        raise ValueError(
            f"Unknown tokenizer data.tokenizer={name!r}; valid choices: {sorted(_TOKENIZERS)}."
        )
    return _TOKENIZERS[name](num_sentinels=num_sentinels)
