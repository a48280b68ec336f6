"""The tokenizer a data config names, training a SentencePiece vocabulary on first use.

`data.tokenizer` is one of
- `byte` (the default): UTF-8 bytes, nothing to train (`data/tokenizer.py`);
- `bpe` or `unigram`: a SentencePiece model of `data.vocab_size` ids trained on the *training*
  split of the configured dataset (validation text never shapes the vocabulary), saved beside the
  dataset under `<data_dir>/scalelab_tokenizers/<dataset>/` and named by its settings, so that a
  different vocabulary size, kind or corpus never reuses it;
- a path ending in `.model`: a pretrained SentencePiece model file.

Training is serialised across processes with the dataset build lock and written atomically by
`data.spm.train`, so a multi-host job trains once and every process loads the same file.
"""

import hashlib
import os
import sys
import time
from collections.abc import Iterator

import ml_collections

from data import corpus, spm
from data.tokenizer import Tokenizer, get_tokenizer

TRAINED_KINDS = ("bpe", "unigram")
MAX_TRAIN_BYTES = 200_000_000  # a catalog dataset (c4) is sampled; the stdlib is 30 MB


def is_sentencepiece(name: str) -> bool:
    """True if `data.tokenizer` names a SentencePiece model (trained here or a file)."""
    return name in TRAINED_KINDS or name.endswith(".model")


def dataset_id(data_cfg: ml_collections.ConfigDict) -> str:
    """A directory-safe name of the dataset the vocabulary is trained on (with its version)."""
    if corpus.is_local(data_cfg):
        builder = corpus.prepare_builder(data_cfg)
        return f"{builder.name}/{builder.builder_config.name}/{builder.version}"
    return data_cfg.dataset.replace(":", "/")


def model_path(data_cfg: ml_collections.ConfigDict) -> str:
    """Where the trained model for `data_cfg` lives (it may not exist yet)."""
    settings = (data_cfg.tokenizer, data_cfg.vocab_size, data_cfg.num_sentinels, spm.FORMAT)
    sha = hashlib.sha256(repr(settings).encode()).hexdigest()[:8]
    name = f"{data_cfg.tokenizer}-{data_cfg.vocab_size}-s{data_cfg.num_sentinels}-{sha}.model"
    root = os.path.join(corpus.resolve_data_dir(data_cfg), "scalelab_tokenizers")
    return os.path.join(root, dataset_id(data_cfg), name)


def _training_texts(data_cfg: ml_collections.ConfigDict) -> Iterator[str]:
    """The training split's documents, up to `MAX_TRAIN_BYTES` of text."""
    source, seen = corpus.load_split(data_cfg, "train"), 0
    for i in range(len(source)):
        text = source[i]
        seen += len(text)
        yield text
        if seen >= MAX_TRAIN_BYTES:
            return


def tokenizer_from_config(data_cfg: ml_collections.ConfigDict) -> Tokenizer:
    """Returns the tokenizer `data.tokenizer` names, training its vocabulary if it is missing.

    Raises:
      ValueError: for an unknown tokenizer name, a missing model file, or an invalid
        `data.vocab_size` (from `data.spm`).
    """
    name = data_cfg.tokenizer
    if not is_sentencepiece(name):
        return get_tokenizer(name, num_sentinels=data_cfg.num_sentinels)
    if name.endswith(".model"):
        path = os.path.abspath(os.path.expanduser(name))
    else:
        path = model_path(data_cfg)
        if not os.path.exists(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with corpus.build_lock(os.path.dirname(path), os.path.basename(path)):
                if not os.path.exists(path):  # another process may have trained it meanwhile
                    start = time.perf_counter()
                    spm.train(
                        _training_texts(data_cfg),
                        path,
                        kind=name,
                        vocab_size=data_cfg.vocab_size,
                        num_sentinels=data_cfg.num_sentinels,
                    )
                    print(
                        f"Trained a {data_cfg.vocab_size}-id {name} vocabulary on the train split "
                        f"in {time.perf_counter() - start:.1f} s: {path}",
                        file=sys.stderr,
                        flush=True,
                    )
    return spm.SentencePieceTokenizer(path, num_sentinels=data_cfg.num_sentinels)
