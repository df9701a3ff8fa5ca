"""`repytilian info` and `repytilian plot`: a model folder's card, and its loss plot
(store.card.card_of and store.card.plot_folder)."""
from __future__ import annotations

import argparse

from ..config import DEFAULT_MODEL_DIR
from ..errors import RepytilianError
from .common import model_flag, say


def add_model_folder(parser: argparse.ArgumentParser) -> None:
    """The folder as a word after the command or, as every other command takes it, as -m."""
    parser.add_argument("model_dir", nargs="?", default=None, help="model folder (or as -m)")
    model_flag(parser)


def model_folder(args: argparse.Namespace) -> str:
    if args.model_dir and args.model not in (DEFAULT_MODEL_DIR, args.model_dir):
        raise RepytilianError(f"two model folders given ({args.model_dir} and -m {args.model}): give one")
    return args.model_dir or args.model


def info_command(args: argparse.Namespace) -> int:
    from ..store.card import card_of

    print(card_of(model_folder(args)), end="")
    return 0


def plot_command(args: argparse.Namespace) -> int:
    from ..store.card import plot_folder

    out = plot_folder(model_folder(args))
    say("note: matplotlib is not installed: pip install 'repytilian[plot]'" if out is None else f"wrote {out}")
    return 0


def register(sub, debug: argparse.ArgumentParser) -> None:
    info = sub.add_parser("info", parents=[debug], help="print a model folder's card: its shape, data, "
                          "training, loss and a sample")
    add_model_folder(info)
    info.set_defaults(handler=info_command)
    plot = sub.add_parser("plot", parents=[debug], help="draw loss.png (train/val loss and learning rate) in a model folder")
    add_model_folder(plot)
    plot.set_defaults(handler=plot_command)
