"""Data: TFDS corpora (`corpus`), tokenizers (`tokenizer`), packed grain pipelines (`pipeline`)."""
