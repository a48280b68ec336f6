"""Documents to pieces: `[BOS] + encode(text) + [EOS]`, cut into pieces of at most T tokens.

Two ways, one per kind of corpus:
- `PieceIndex` tokenizes a whole (local, small) split up front into one flat array and indexes its
  pieces, so pieces can be shuffled globally by random access.
- `SplitIntoPiecesIterDataset` cuts a stream of tokenized documents lazily, for catalog datasets
  too large to index at start-up (c4); pieces of one document then stay adjacent.
"""

from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from data.tokenizer import Tokenizer


def tokenize_document(text: str, tokenizer: Tokenizer) -> np.ndarray:
    """Returns int32 `[BOS] + encode(text) + [EOS]`."""
    ids = tokenizer.encode(text)
    out = np.empty(len(ids) + 2, dtype=np.int32)
    out[0], out[1:-1], out[-1] = tokenizer.bos_id, ids, tokenizer.eos_id
    return out


class PieceIndex:
    """A split tokenized into one flat array; piece `i` is `tokens[starts_P[i]:][:lengths_P[i]]`.

    Building it for the stdlib train split (1,676 files, 29.7 M tokens, 117k pieces of 256) takes
    0.13 s on the 2-core CPU here (one vectorised encode per file, no per-byte Python), after
    0.15 s to read the texts from the array_record files. The flat array is uint16: 59 MB.
    """

    def __init__(self, tokens: np.ndarray, starts_P: np.ndarray, lengths_P: np.ndarray):
        self.tokens = tokens
        self.starts_P = starts_P
        self.lengths_P = lengths_P

    @classmethod
    def build(cls, texts: Sequence[str], tokenizer: Tokenizer, seq_len: int) -> "PieceIndex":
        """Tokenizes every text of `texts` and cuts each document into pieces of <= `seq_len`."""
        # uint16 halves the memory of the flat array whenever the vocabulary allows it.
        dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.int32
        bos, eos = np.array([tokenizer.bos_id], dtype), np.array([tokenizer.eos_id], dtype)
        parts, lengths_D = [], np.zeros(len(texts), dtype=np.int64)
        for d in range(len(texts)):
            ids = tokenizer.encode(texts[d]).astype(dtype)
            parts += [bos, ids, eos]
            lengths_D[d] = len(ids) + 2
        tokens = np.concatenate(parts) if parts else np.zeros(0, dtype)
        doc_starts_D = np.cumsum(lengths_D) - lengths_D

        # Piece k of document d starts at doc_starts_D[d] + k * seq_len; computed without a loop.
        num_pieces_D = -(-lengths_D // seq_len)
        doc_P = np.repeat(np.arange(len(texts)), num_pieces_D)
        first_piece_D = np.cumsum(num_pieces_D) - num_pieces_D
        offset_P = (np.arange(len(doc_P)) - first_piece_D[doc_P]) * seq_len
        starts_P = doc_starts_D[doc_P] + offset_P
        lengths_P = np.minimum(seq_len, lengths_D[doc_P] - offset_P).astype(np.int32)
        return cls(tokens, starts_P, lengths_P)

    def __len__(self) -> int:
        return len(self.starts_P)

    def __getitem__(self, index: int) -> np.ndarray:
        start = self.starts_P[index]
        return self.tokens[start : start + self.lengths_P[index]].astype(np.int32)

    def __repr__(self) -> str:
        return f"PieceIndex({len(self)} pieces, {len(self.tokens)} tokens)"


class _SplitIntoPiecesIterator(grain.DatasetIterator):
    """Yields consecutive pieces of each parent document; checkpointable mid-document."""

    def __init__(self, parent: grain.DatasetIterator, seq_len: int):
        super().__init__(parent)
        self._seq_len = seq_len
        self._doc: np.ndarray | None = None
        self._offset = 0
        # Parent state *before* the current document, so a restore re-reads that document.
        self._doc_parent_state = parent.get_state()

    def __next__(self) -> np.ndarray:
        while self._doc is None or self._offset >= len(self._doc):
            self._doc_parent_state = self._parent.get_state()
            self._doc, self._offset = next(self._parent), 0
        piece = self._doc[self._offset : self._offset + self._seq_len]
        self._offset += self._seq_len
        return piece

    def get_state(self) -> dict[str, Any]:
        return {"parent": self._doc_parent_state, "offset": self._offset}

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["parent"])
        self._doc_parent_state = state["parent"]
        self._doc, self._offset = None, 0
        if state["offset"] > 0:
            self._doc, self._offset = next(self._parent), state["offset"]


class SplitIntoPiecesIterDataset(grain.IterDataset):
    """Cuts each int32 document of the parent into pieces of at most `seq_len` tokens."""

    def __init__(self, parent: grain.IterDataset, seq_len: int):
        super().__init__(parent)
        self._seq_len = seq_len

    def __iter__(self) -> grain.DatasetIterator:
        return _SplitIntoPiecesIterator(self._parent.__iter__(), self._seq_len)

    def __str__(self) -> str:
        return f"SplitIntoPiecesIterDataset(seq_len={self._seq_len})"
