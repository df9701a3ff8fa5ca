"""`repytilian eval`: a model's loss, perplexity and bits per character on text, in one line
(the scoring is evaluate.evaluate_model's)."""
from __future__ import annotations

import argparse

from ..runtime.paths import progress_wanted
from .common import (
    device_flag,
    last_flag,
    model_folder_argument,
    open_model,
    positive_int,
)


def eval_command(args: argparse.Namespace) -> int:
    from ..data.corpus import DataSource
    from ..evaluate import evaluate_model

    lm = open_model(args, "evaluating")
    source = DataSource.from_args(args.datafile, args.datapath) if args.datafile or args.datapath else None
    r = evaluate_model(lm, source, stride=args.stride, progress=progress_wanted())
    bpc = "" if r.bits_per_char is None else f", {r.bits_per_char:.4f} bits per character"
    bpc += "" if r.bits_per_byte is None else f", {r.bits_per_byte:.4f} bits per byte"
    print(f"{r.scope}: loss {r.loss:.4f} nats per token, perplexity {r.perplexity:.3f}{bpc} "
          f"({r.tokens:,} tokens scored{'' if r.chars is None else f', {r.chars:,} characters'}; "
          f"windows of {r.block_size} with stride {r.stride})")
    return 0


def register(sub, debug: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("eval", parents=[debug], help="loss, perplexity and bits per character of a model on text")
    model_folder_argument(parser)
    parser.add_argument("-d", "--datafile", "--data", dest="datafile", help="a file to evaluate on")
    parser.add_argument("-p", "--datapath", help="a folder to evaluate on (default: the model's validation split)")
    parser.add_argument("--stride", type=positive_int, default=None, help="window step (default: half the context)")
    device_flag(parser)
    last_flag(parser)
    parser.set_defaults(handler=eval_command)
