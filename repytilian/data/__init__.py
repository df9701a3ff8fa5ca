"""Training data: where text comes from, how it is read and tokenized, and the windows training sees.

- corpus.py: data sources (file, folder, named data set), reading them, the id arrays, the
  train/val split and batches; what the rest of the package imports from here;
- textfiles.py: text files read piece by piece (UTF-8 rules, binary files skipped, large corpora);
- jsondata.py: JSON token data (layouts, a validation part, errors with positions);
- tokencache.py: large corpora tokenized once into memory-mapped id files, keyed by the text's hash;
- datasets.py: named data sets (Tiny Shakespeare): cache, mirror, verified download.
"""
from .corpus import (  # noqa: F401
    STREAM_MB,
    VAL_FRACTION,
    DataSource,
    TokenData,
    get_batch,
    load_corpus,
    load_text,
    read_text_dir,
    read_text_file,
    stream_threshold,
    train_tokenizer,
)
