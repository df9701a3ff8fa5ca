"""`repytilian inspect`: look inside a model from the terminal, the views of inspection.py as
tables on stdout and, with --png, as a figure (matplotlib, `pip install 'repytilian[plot]'`).

    repytilian inspect -m models/shakespeare/v3c --text "ROMEO: But soft" --attention --layer 6 --head 2
    repytilian inspect -m models/shakespeare/v3c --text "ROMEO: But soft" --lens --position 7
    repytilian inspect -m models/shakespeare/v3c --embeddings --png embeddings.png
    repytilian inspect -m models/shakespeare/v1c --text "To be, or not to be" --surprise --compare models/shakespeare/v3c
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import RepytilianError
from ..store.lock import check_writable
from .common import (
    device_flag,
    last_flag,
    model_folder_argument,
    open_model,
    positive_int,
    say,
)

VIEWS = ("attention", "lens", "embeddings", "surprise")


def inspect_command(args: argparse.Namespace) -> int:
    from .. import inspection

    view = next((v for v in VIEWS if getattr(args, v)), "attention")
    _note_what_the_view_leaves_out(args, view)
    if args.png:  # before the model's work, not after it
        check_writable(Path(args.png), "draw to", "give --png another place")
    lm = open_model(args, "inspecting")
    ids = [] if view == "embeddings" else _ids(lm, args.text)
    if view == "attention":
        result = inspection.attention(lm.model, lm.tokenizer, ids)
        layer, head = _layer_and_head(args, result.weights.shape)
        _print_attention(result, layer, head)
    elif view == "lens":
        result = inspection.logit_lens(lm.model, lm.tokenizer, ids, args.top)
        _print_lens(result, _position(args.position, len(ids)))
    elif view == "embeddings":
        result = inspection.embeddings(lm.model, lm.tokenizer)
        _print_embeddings(result)
    else:
        result = inspection.surprise(lm.model, lm.tokenizer, ids)
        other = None
        if args.compare:
            second = open_model(argparse.Namespace(model=args.compare, device=args.device, last=args.last), "comparing")
            _, other, _ = inspection.compare((lm.model, lm.tokenizer), (second.model, second.tokenizer), args.text)
        _print_surprise(result, other, args.model, args.compare)
    if args.png:
        from .inspection_figures import draw

        out = draw(view, result, Path(args.png), args)
        if out is None:
            raise RepytilianError("drawing needs matplotlib: pip install 'repytilian[plot]'")
        say(f"wrote {out}")
    return 0


# The flags that only one view reads: given with another, they were ignored without a word
FLAGS_OF = {"layer": "attention", "head": "attention", "position": "lens", "top": "lens", "compare": "surprise"}


def _note_what_the_view_leaves_out(args: argparse.Namespace, view: str) -> None:
    for name, owner in FLAGS_OF.items():
        if getattr(args, name) is not None and owner != view:
            say(f"note: --{name} is for the {owner} view (--{owner}); the {view} view does not use it")
    if view == "embeddings" and args.text:
        say("note: the embeddings view shows every token of the vocabulary; --text is not used")
    args.head, args.top = args.head or 1, args.top or 5  # their defaults, once it is known who set them


def _ids(lm, text: str | None) -> list[int]:
    if not text:
        raise RepytilianError("give the text to look at: --text \"...\"", ("--text",))
    return lm.tokenizer.encode(text)


def _position(position: int | None, length: int) -> int:
    if position is None:
        return length - 1
    if not 1 <= position <= length:
        raise RepytilianError(f"--position must be from 1 to {length} (the text's tokens), got {position}")
    return position - 1


def _layer_and_head(args: argparse.Namespace, shape: tuple) -> tuple[int, int]:
    layers, heads = shape[:2]
    layer = layers if args.layer is None else args.layer
    if not 1 <= layer <= layers:
        raise RepytilianError(f"--layer must be from 1 to {layers}, got {layer}")
    if not 1 <= args.head <= heads:
        raise RepytilianError(f"--head must be from 1 to {heads}, got {args.head}")
    return layer - 1, args.head - 1


def _shown(label: str) -> str:
    """A token as one line of text: a line break as \\n, and so on."""
    return repr(label)[1:-1]


def _print_attention(result, layer: int, head: int) -> None:
    weights = result.weights[layer, head]
    print(f"layer {layer + 1}, head {head + 1}: where each token looks (its three largest weights)")
    for t, token in enumerate(result.tokens):
        order = weights[t, : t + 1].argsort()[::-1][:3]
        looks = ", ".join(f"{i + 1} '{_shown(result.tokens[i])}' {weights[t, i]:.2f}" for i in order)
        print(f"{t + 1:4d} '{_shown(token)}'  <- {looks}")


def _print_lens(result, position: int) -> None:
    print(f"after token {position + 1} '{_shown(result.tokens[position])}': the likeliest next tokens, read "
          "after each stage (the last is the model's own prediction)")
    for stage, table in zip(result.stages, result.top):
        print(f"{stage:>12}  " + "  ".join(f"'{_shown(label)}' {p:.2f}" for label, p in table[position]))


def _print_embeddings(result) -> None:
    print(f"token embeddings on their two main axes: {result.explained[0]:.0%} and {result.explained[1]:.0%} "
          "of their variance")
    for axis in (0, 1):
        order = result.tokens[:, axis].argsort()
        ends = [", ".join(f"'{_shown(result.labels[i])}'" for i in part) for part in (order[:8], order[::-1][:8])]
        print(f"axis {axis + 1}: one end {ends[0]}; the other {ends[1]}")


def _print_surprise(result, other, model: str, second: str | None) -> None:
    print(f"{model}: {result.mean:.2f} bits per token on average" +
          (f"; {second}: {other.mean:.2f}" if other is not None else ""))
    for t, token in enumerate(result.tokens[1:], start=1):
        line = f"{t + 1:4d} '{_shown(token)}' {result.bits[t - 1]:6.2f} bits"
        if other is not None:
            line += f"  {other.bits[t - 1]:6.2f}  ({other.bits[t - 1] - result.bits[t - 1]:+.2f})"
        print(line)


def register(sub, debug: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("inspect", parents=[debug], help="look inside a model: attention, the logit lens, "
                            "embeddings, surprise (tables; --png for a figure)")
    model_folder_argument(parser)
    parser.add_argument("--text", help="the text to look at (at most the model's context)")
    views = parser.add_mutually_exclusive_group()
    views.add_argument("--attention", action="store_true", help="where each token looks, per layer and head (default)")
    views.add_argument("--lens", action="store_true", help="the prediction read after each block (the logit lens)")
    views.add_argument("--embeddings", action="store_true", help="the token embeddings on their two main axes")
    views.add_argument("--surprise", action="store_true", help="each token's surprise in bits (--compare: two models)")
    parser.add_argument("--layer", type=positive_int, default=None, help="attention: the layer (default the last)")
    parser.add_argument("--head", type=positive_int, default=None, help="attention: the head (default 1; the figure "
                        "shows them all)")
    parser.add_argument("--position", type=positive_int, default=None, help="lens: after which token (default the last)")
    parser.add_argument("--top", type=positive_int, default=None, help="lens: tokens shown per stage (default 5)")
    parser.add_argument("--compare", metavar="DIR", help="surprise: a second model folder with the same tokenizer")
    parser.add_argument("--png", metavar="FILE", help="also draw the view to this PNG file")
    device_flag(parser)
    last_flag(parser)
    parser.set_defaults(handler=inspect_command)
