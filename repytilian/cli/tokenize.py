"""`repytilian tokenize`: how each tokenizer sees a corpus (vocabulary, tokens, compression, speed)."""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

from ..data.corpus import DataSource, load_corpus
from ..errors import RepytilianError
from ..tokenizers import REGISTRY, tokenizer_class
from .common import positive_int
from .flags import in_flags


@dataclass
class TokenizerStats:
    name: str
    vocab_size: int
    tokens: int
    chars: int
    train_seconds: float
    encode_seconds: float
    megabytes: float

    @property
    def chars_per_token(self) -> float:
        return self.chars / max(self.tokens, 1)

    @property
    def mb_per_second(self) -> float:
        return self.megabytes / max(self.encode_seconds, 1e-9)


def measure(name: str, corpus, vocab_size: int | None = None) -> TokenizerStats:
    cls = tokenizer_class(name)
    options = {"vocab_size": vocab_size} if name == "bpe" else {}
    t0 = time.perf_counter()
    tokenizer = cls.train(corpus, **options)
    t1 = time.perf_counter()
    if isinstance(corpus, str):
        ids = tokenizer.encode_array(corpus)
        chars, megabytes = len(corpus), len(corpus.encode("utf-8")) / 1e6
    else:
        ids = tokenizer.encode_sequences(corpus.train + (corpus.val or []))
        chars, megabytes = corpus.chars, corpus.chars / 1e6
    t2 = time.perf_counter()
    return TokenizerStats(name, tokenizer.vocab_size, len(ids), chars, t1 - t0, t2 - t1, megabytes)


def print_tokenizer_table(args: argparse.Namespace) -> None:
    names = args.tokenizer or [n for n, cls in REGISTRY.items() if cls.input_format == "text"]
    source = DataSource.from_args(args.datafile, args.datapath)
    source = DataSource(source.kind, source.value, args.json_key, args.json_val_key, args.json_layout)
    corpora: dict[str, object] = {}
    header = f"{'tokenizer':<11} {'vocab':>7} {'tokens':>11} {'chars/token':>11} {'train s':>8} {'encode MB/s':>11}"
    for name in names:
        fmt = tokenizer_class(name).input_format
        if fmt not in corpora:  # a problem with the data ends the command
            corpora[fmt] = load_corpus(source, fmt, stream=False)  # timing tokenizers on the text in memory
        try:  # a tokenizer that cannot run here (a missing package or encoding) is one row
            s = measure(name, corpora[fmt], args.vocab_size)
            row = (f"{s.name:<11} {s.vocab_size:>7,} {s.tokens:>11,} {s.chars_per_token:>11.2f} "
                   f"{s.train_seconds:>8.2f} {s.mb_per_second:>11.1f}")
        except RepytilianError as e:
            if len(names) == 1:
                raise
            row = f"{name:<11} unavailable: {in_flags(e)}"
        if header:  # above the first row, so that an error before any row stands alone
            print(header)
            header = ""
        print(row)


def tokenize_command(args: argparse.Namespace) -> int:
    print_tokenizer_table(args)
    return 0


def register(sub, debug: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("tokenize", parents=[debug], aliases=["data"],
                            help="compare tokenizers on a corpus: vocabulary, tokens, characters per token, speed")
    parser.add_argument("-d", "--datafile", "--data", dest="datafile", help="a text (or, with -z json, JSON) file")
    parser.add_argument("-p", "--datapath", help="a folder of text (or .json) files")
    parser.add_argument("-z", "--tokenizer", action="append", default=None,
                        help="tokenizer(s) to compare (repeatable; default: every text tokenizer)")
    parser.add_argument("--vocab-size", type=positive_int, default=None, help="for bpe (default 512)")
    parser.add_argument("--json-key")
    parser.add_argument("--json-val-key")
    parser.add_argument("--json-layout", choices=("sequence", "sequences"), default=None)
    parser.set_defaults(handler=tokenize_command)
