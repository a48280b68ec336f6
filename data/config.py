"""Default data configuration (the `data` block of an experiment config)."""

import ml_collections


def default_data_config() -> ml_collections.ConfigDict:
    """Returns the data config with every field the `data/` package reads.

    Fields:
      dataset: 'stdlib' (this interpreter's standard-library source, built locally) or a TFDS
        catalog name such as 'lm1b' or 'c4/en' (read with `tfds.data_source`).
      glob: if non-empty, a glob of local text files (recursive `**` allowed); overrides `dataset`.
      data_dir: TFDS data dir; '' means `$SCALELAB_DATA_DIR`, else `~/.cache/scalelab/tfds`.
      val_fraction: fraction of local files hashed into the validation split.
      text_key: feature holding the text in catalog datasets.
      tokenizer: tokenizer name (see `data.tokenizer.get_tokenizer`).
      num_sentinels: sentinel ids reserved by the tokenizer (span corruption).
      seq_len: tokens per packed row (T).
      batch_size: global batch size in rows; split evenly over processes.
    """
    cfg = ml_collections.ConfigDict()
    cfg.dataset = "stdlib"
    cfg.glob = ""
    cfg.data_dir = ""
    cfg.val_fraction = 0.05
    cfg.text_key = "text"
    cfg.tokenizer = "byte"
    cfg.num_sentinels = 100
    cfg.seq_len = 256
    cfg.batch_size = 16
    return cfg
