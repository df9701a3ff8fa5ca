"""`repytilian info` and `repytilian plot`: a model folder's card, and its loss plot
(store.card.card_of and store.card.plot_folder)."""
from __future__ import annotations

import argparse

from .common import model_folder_argument, say


def info_command(args: argparse.Namespace) -> int:
    from ..store.card import card_of

    print(card_of(args.model), end="")
    return 0


def plot_command(args: argparse.Namespace) -> int:
    from ..store.card import plot_folder

    out = plot_folder(args.model)
    say("note: matplotlib is not installed: pip install 'repytilian[plot]'" if out is None else f"wrote {out}")
    return 0


def register(sub, debug: argparse.ArgumentParser) -> None:
    info = sub.add_parser("info", parents=[debug], help="print a model folder's card: its shape, data, "
                          "training, loss and a sample")
    model_folder_argument(info)
    info.set_defaults(handler=info_command)
    plot = sub.add_parser("plot", parents=[debug], help="draw loss.png (train/val loss and learning rate) in a model folder")
    model_folder_argument(plot)
    plot.set_defaults(handler=plot_command)
