"""Hugging Face checkpoints <-> this codebase (GPT-2, BERT, T5): converters and file I/O."""
