"""SentencePiece tokenizers (BPE and unigram): training and the `Tokenizer` protocol.

Id layout of a model trained by `train` (`vocab_size` counts every id, specials included):

    0 <pad> | 1 <s> (BOS) | 2 </s> (EOS) | 3 <unk> | 4 <mask> | 5 .. 5+S-1 <extra_id_0..S-1>
    | next 256: byte-fallback pieces <0x00> .. <0xFF> | learned pieces up to vocab_size - 1

with `S = num_sentinels`. Pad, BOS, EOS, mask and the sentinels are SentencePiece *control*
symbols: encoding text never produces them (the text "<mask>" is spelled with ordinary pieces) and
decoding drops them. `<unk>` is never produced either, since byte fallback spells any character it
has no piece for as its UTF-8 bytes. Unlike `ByteTokenizer` (mask 3), the mask id here is 4;
objectives use `tokenizer.mask_id`, never a constant.

The tokenizer is lossless: `decode(encode(text)) == text` for any text, and
`bytes_per_token[encode(text)].sum() == len(text.encode("utf-8"))`, so bits per byte stay exact.
That takes the identity normalizer, no dummy prefix, no whitespace removal, byte fallback, and one
fix-up in `encode`: SentencePiece writes a space as "▁" (U+2581) and decodes every "▁" to a space,
so a literal "▁" in the text is spelled by its three byte-fallback pieces instead.

Other models: `SentencePieceTokenizer` loads any `.model` file, finding every special by name (pad,
BOS, EOS from the model's own ids; "<mask>" and "<extra_id_i>" as control symbols), so a
pretrained model with the same symbols at other ids works. A model lacking one of them, or one that
is not lossless as above (most pretrained models normalize text or add a dummy prefix), is refused
with a ValueError naming what is missing: an inexact bits/byte would be silently wrong, whereas
retraining with `train` takes seconds to a minute.
"""

import io
import os
import random
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import sentencepiece as sp_lib

from common import atomic

FORMAT = 1  # Bump whenever the trainer options change, so cached vocabularies are retrained.
KINDS = ("bpe", "unigram")
MASK_PIECE = "<mask>"
_NUM_BYTES = 256
_WS = "\u2581"  # SentencePiece's visible space, "▁".
_NUM_META = 5  # pad, bos, eos, unk, mask.


def sentinel_piece(i: int) -> str:
    """The piece of sentinel `i` (T5's spelling)."""
    return f"<extra_id_{i}>"


def min_vocab_size(num_sentinels: int) -> int:
    """The smallest valid `vocab_size`: the reserved ids plus one learned piece."""
    return _NUM_META + num_sentinels + _NUM_BYTES + 1


def _check_args(kind: str, vocab_size: int, num_sentinels: int) -> None:
    if kind not in KINDS:
        raise ValueError(
            f"Unknown SentencePiece kind data.tokenizer={kind!r}; valid choices: {list(KINDS)}."
        )
    if num_sentinels < 0:
        raise ValueError(f"data.num_sentinels must be >= 0, got {num_sentinels}.")
    if vocab_size < min_vocab_size(num_sentinels):
        raise ValueError(
            f"data.vocab_size={vocab_size} is too small for {kind}: {_NUM_META} specials, "
            f"{num_sentinels} sentinels and {_NUM_BYTES} byte pieces are reserved; set "
            f"data.vocab_size >= {min_vocab_size(num_sentinels)} (e.g. 4096)."
        )


def _utf8_len(s: str) -> int:
    return len(s) if s.isascii() else len(s.encode("utf-8"))


def _split_long(line: str, max_bytes: int) -> Iterator[str]:
    """Cuts `line` into pieces of <= `max_bytes` UTF-8 bytes at character boundaries."""
    raw, start = line.encode("utf-8"), 0
    while start < len(raw):
        end = min(start + max_bytes, len(raw))
        while end < len(raw) and raw[end] & 0xC0 == 0x80:  # Not inside a character.
            end -= 1
        yield raw[start:end].decode("utf-8")
        start = end


def _sentences(texts: Iterable[str], max_bytes: int) -> Iterator[str]:
    """Cuts each document at line ends into training sentences of <= `max_bytes` bytes.

    Newlines stay inside a sentence, so pieces such as ")\\n\\n▁▁▁▁def" are learned; a sentence
    never spans two documents.
    """
    for text in texts:
        buf, size = [], 0
        for line in text.splitlines(keepends=True):
            n = _utf8_len(line)
            for part in _split_long(line, max_bytes) if n > max_bytes else (line,):
                n = _utf8_len(part)
                if size + n > max_bytes:
                    yield "".join(buf)
                    buf, size = [], 0
                buf.append(part)
                size += n
        if buf:
            yield "".join(buf)


def _reservoir(items: Iterable[str], k: int, seed: int) -> list[str]:
    """A uniform sample of `k` items (all if fewer), the same for the same seed and input."""
    rng, sample = random.Random(seed), []
    for i, item in enumerate(items):
        if i < k:
            sample.append(item)
        else:
            j = rng.randrange(i + 1)
            if j < k:
                sample[j] = item
    return sample


def train(
    texts: Iterable[str],
    model_path: str,
    *,
    kind: str = "bpe",
    vocab_size: int = 4096,
    num_sentinels: int = 100,
    max_sentence_bytes: int = 2048,
    input_sentence_size: int = 4096,
    seed: int = 0,
    num_threads: int = 2,
) -> None:
    """Trains a SentencePiece model on `texts` and writes it atomically to `model_path`.

    Each document is cut at line ends into sentences of at most `max_sentence_bytes` bytes; a
    seeded uniform sample of `input_sentence_size` of them (all if fewer) is trained on, so the
    training text is capped at `input_sentence_size * max_sentence_bytes` bytes (8 MiB by default;
    on the 30 MB stdlib, all of it gives the same compression). A 4096-id vocabulary of the stdlib
    takes ~3 s (BPE) or ~30 s (unigram) on the 2-core CPU here. All of `texts` is read once, to
    sample; slice a huge corpus first.

    The model is trained into a temporary directory beside `model_path` and moved into place with
    `os.replace`, so a crash never leaves a partial model; the same corpus and seed give the same
    model.

    Args:
      texts: documents (e.g. whole source files).
      model_path: the `.model` file to write; its directory is created if missing.
      kind: "bpe" or "unigram".
      vocab_size: total ids, the reserved ones (see the module docstring) included.
      num_sentinels: sentinel ids `<extra_id_i>` to reserve.
      max_sentence_bytes: the longest training sentence in UTF-8 bytes.
      input_sentence_size: how many sentences to sample.
      seed: seeds the sample and SentencePiece's own random generator.
      num_threads: trainer threads.

    Raises:
      ValueError: for an unknown kind, a too small (or, for a small corpus, too large) vocabulary
        or an invalid sentence setting.
    """
    _check_args(kind, vocab_size, num_sentinels)
    if max_sentence_bytes < 16:
        raise ValueError(f"max_sentence_bytes must be >= 16, got {max_sentence_bytes}.")
    if input_sentence_size < 1:
        raise ValueError(f"input_sentence_size must be >= 1, got {input_sentence_size}.")
    sentences = _reservoir(_sentences(texts, max_sentence_bytes), input_sentence_size, seed)
    if not sentences:
        raise ValueError("No training text: every document given to data.spm.train is empty.")

    options = dict(
        model_type=kind,
        vocab_size=vocab_size,
        pad_id=0,
        bos_id=1,
        eos_id=2,
        unk_id=3,
        control_symbols=[MASK_PIECE] + [sentinel_piece(i) for i in range(num_sentinels)],
        # Lossless: no normalization, no dummy prefix, keep every space, bytes for the rest.
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        byte_fallback=True,
        # Rare characters go to byte fallback rather than taking a piece each (c4 has thousands).
        character_coverage=0.9999,
        # Code: pieces may span spaces ("▁=▁self.") and runs of indentation ("▁▁▁▁▁▁▁▁"),
        # and mix letters, digits and punctuation ("__init__", "utf8", "(self):\n"). Spanning
        # spaces gives 8% more bytes per token on the stdlib; splitting digits costs 3%.
        split_by_whitespace=False,
        allow_whitespace_only_pieces=True,
        split_by_unicode_script=False,
        split_by_number=False,
        split_digits=False,
        max_sentencepiece_length=16,  # 24 or 32 gave no gain on the stdlib.
        max_sentence_length=max_sentence_bytes,
        input_sentence_size=0,  # Sampled above.
        shuffle_input_sentence=False,
        num_threads=num_threads,
        minloglevel=2,
    )
    if kind == "unigram":
        # Fewer seeds, faster pruning: ~3x faster than the defaults on the stdlib, no worse.
        options.update(seed_sentencepiece_size=100_000, shrinking_factor=0.5, num_sub_iterations=1)

    model_path = os.path.abspath(model_path)
    os.makedirs(os.path.dirname(model_path), exist_ok=True)
    tmp_dir = tempfile.mkdtemp(prefix=".spm-train-", dir=os.path.dirname(model_path))
    try:
        # The model comes back in memory (no model_prefix: the proto would record the temp path
        # and two identical trainings would differ), is checked from the temp dir, then written.
        tmp_path, proto = os.path.join(tmp_dir, "spm.model"), io.BytesIO()
        sp_lib.set_random_generator_seed(seed)
        try:
            sp_lib.SentencePieceTrainer.train(
                sentence_iterator=iter(sentences), model_writer=proto, **options
            )
        except RuntimeError as e:
            if "ocabulary size" in str(e):
                detail = str(e).rsplit("] ", 1)[-1]  # Drop SentencePiece's source location.
                raise ValueError(
                    f"data.vocab_size={vocab_size} does not fit this corpus ({detail}); "
                    "change data.vocab_size or train on more text."
                ) from e
            raise
        with open(tmp_path, "wb") as f:
            f.write(proto.getvalue())
        SentencePieceTokenizer(tmp_path, num_sentinels)  # Loads and checks it.
        atomic.write_bytes(model_path, proto.getvalue())
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _lossy_settings(proto_bytes: bytes) -> list[str]:
    """The settings of a serialized model that would make it lossy (empty if none)."""
    from sentencepiece import sentencepiece_model_pb2  # Needs protobuf; only loading uses it.

    proto = sentencepiece_model_pb2.ModelProto.FromString(proto_bytes)
    norm = proto.normalizer_spec
    lossy = []
    if norm.precompiled_charsmap or norm.normalization_rule_tsv:
        lossy.append(f"normalization_rule_name={norm.name!r} (must be 'identity')")
    if norm.add_dummy_prefix:
        lossy.append("add_dummy_prefix=True")
    if norm.remove_extra_whitespaces:
        lossy.append("remove_extra_whitespaces=True")
    if not norm.escape_whitespaces:
        lossy.append("escape_whitespaces=False")
    if not proto.trainer_spec.byte_fallback:
        lossy.append("byte_fallback=False")
    return lossy


class SentencePieceTokenizer:
    """A lossless SentencePiece model behind the `Tokenizer` protocol (see the module docstring)."""

    def __reduce__(self):
        # The SWIG processor does not pickle; grain worker processes reload the model file.
        return (type(self), self._init_args)

    def __init__(self, model_path: str, num_sentinels: int = 100):
        """Loads `model_path`.

        Args:
          model_path: a `.model` file, written by `train` or another lossless SentencePiece model
            with the same symbols.
          num_sentinels: sentinels to use; the model must hold at least this many.

        Raises:
          ValueError: if the file is missing, or the model lacks a special symbol or is lossy.
        """
        self._init_args = (model_path, num_sentinels)
        if num_sentinels < 0:
            raise ValueError(f"data.num_sentinels must be >= 0, got {num_sentinels}.")
        if not os.path.isfile(model_path):
            raise ValueError(
                f"SentencePiece model data.tokenizer={model_path!r} does not exist; give the path "
                "of an existing .model file, or set data.tokenizer to 'bpe' or 'unigram' to train."
            )
        with open(model_path, "rb") as f:
            proto_bytes = f.read()
        sp = sp_lib.SentencePieceProcessor()
        try:
            sp.LoadFromSerializedProto(proto_bytes)
        except RuntimeError as e:
            raise ValueError(
                f"data.tokenizer={model_path!r} is not a SentencePiece model ({e}); "
                "give the path of a .model file."
            ) from e
        self._sp, self._model_path, self._num_sentinels = sp, model_path, num_sentinels
        refuse = f"SentencePiece model data.tokenizer={model_path!r}"
        fix = "train a model with data.spm.train (data.tokenizer='bpe' or 'unigram')"

        lossy = _lossy_settings(proto_bytes)
        if lossy:
            raise ValueError(
                f"{refuse} is lossy ({', '.join(lossy)}), so round trips and bits per byte "
                f"would be inexact; {fix}."
            )

        V = sp.get_piece_size()
        self._special_ids = {"pad": sp.pad_id(), "bos": sp.bos_id(), "eos": sp.eos_id()}
        for name, i in self._special_ids.items():
            if not (0 <= i < V and sp.is_control(i)):
                raise ValueError(f"{refuse} has no {name} control symbol ({name}_id={i}); {fix}.")

        def control_id(piece: str, hint: str) -> int:
            i = sp.piece_to_id(piece)
            if sp.id_to_piece(i) != piece or not sp.is_control(i):
                raise ValueError(f"{refuse} has no control symbol {piece!r}; {fix}{hint}.")
            return i

        self._mask_id = control_id(MASK_PIECE, "")
        self._sentinel_ids = [
            control_id(sentinel_piece(i), f", or set data.num_sentinels <= {i}")
            for i in range(num_sentinels)
        ]

        # A literal "▁" is spelled by its bytes (see the module docstring).
        self._ws_ids = [sp.piece_to_id(f"<0x{b:02X}>") for b in _WS.encode("utf-8")]
        bytes_per_token_V = np.zeros(V, dtype=np.int32)
        is_text_V = np.zeros(V, dtype=bool)
        for i in range(V):
            if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
                continue
            is_text_V[i] = True
            if sp.is_byte(i):
                bytes_per_token_V[i] = 1
            else:  # Normal and user-defined pieces; "▁" stands for one space.
                bytes_per_token_V[i] = len(sp.id_to_piece(i).replace(_WS, " ").encode("utf-8"))
        bytes_per_token_V.setflags(write=False)
        self._bytes_per_token_V, self._is_text_V = bytes_per_token_V, is_text_V

    @property
    def model_path(self) -> str:
        return self._model_path

    @property
    def vocab_size(self) -> int:
        """Every id of the model, the specials included."""
        return self._sp.get_piece_size()

    @property
    def num_sentinels(self) -> int:
        return self._num_sentinels

    @property
    def pad_id(self) -> int:
        return self._special_ids["pad"]

    @property
    def bos_id(self) -> int:
        return self._special_ids["bos"]

    @property
    def eos_id(self) -> int:
        return self._special_ids["eos"]

    @property
    def mask_id(self) -> int:
        return self._mask_id

    @property
    def bytes_per_token(self) -> np.ndarray:
        """int32[vocab_size]: raw UTF-8 bytes each id stands for (0 for specials and unk)."""
        return self._bytes_per_token_V

    def sentinel(self, i: int) -> int:
        """Returns the id of sentinel `i` (0-based)."""
        if not 0 <= i < self._num_sentinels:
            raise ValueError(f"Sentinel index {i} out of range [0, {self._num_sentinels}).")
        return self._sentinel_ids[i]

    def encode(self, text: str | bytes) -> np.ndarray:
        """Returns the int32 ids of `text` (no BOS/EOS added); bytes are decoded as UTF-8.

        Invalid UTF-8 in bytes becomes U+FFFD, whose 3 bytes `bytes_per_token` then counts.
        """
        if not isinstance(text, str):
            text = bytes(text).decode("utf-8", errors="replace")
        if _WS not in text:
            return np.asarray(self._sp.encode(text), dtype=np.int32)
        ids = []
        for k, part in enumerate(text.split(_WS)):
            if k:
                ids += self._ws_ids
            ids += self._sp.encode(part)
        return np.asarray(ids, dtype=np.int32)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Returns the text of `ids`; special, unknown and out-of-range ids are dropped."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        ids = ids[(ids >= 0) & (ids < self.vocab_size)]
        return self._sp.decode(ids[self._is_text_V[ids]].tolist())
