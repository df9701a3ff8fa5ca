"""`repytilian VERB`: one parser whose verbs each live in a module of their own (train.py,
generate.py, chat.py, evaluate.py, info.py (info, plot), convert.py (import, import-legacy,
export), tokenize.py, inspection.py (inspect), ladder.py, serve.py, bench.py). Each verb's module registers its flags
and a handler that calls one library function and words its result."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import __version__
from ..errors import EXIT_USER_ERROR, RepytilianError
from . import chat, convert, evaluate, generate, info, inspection, tokenize, train
from .common import debug_flag, run
from .flags import with_sample_flags
from .train import our_arguments


def _ladder_and_serve(sub, debug: argparse.ArgumentParser) -> None:
    from .ladder import add_arguments as add_ladder_arguments
    from .ladder import ladder_command
    from .serve import add_serve_arguments, serve_command

    ladder = sub.add_parser("ladder", parents=[debug], help="the lecture's steps from a bigram table to the GPT, each "
                            "trained as long, compared in one table")
    add_ladder_arguments(ladder)
    ladder.set_defaults(handler=ladder_command)
    serve = sub.add_parser("serve", parents=[debug],
                           help="a web playground and an OpenAI-compatible API for your models, on this machine")
    add_serve_arguments(serve)
    serve.set_defaults(handler=serve_command)


def bench_command(args: argparse.Namespace) -> int:
    from .bench import main as bench_main

    return bench_main(args.bench_args)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="repytilian", description="Train GPT language models on your own text, "
                                   "and generate text from them")
    root.add_argument("--version", action="version", version=f"repytilian {__version__}")
    sub = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    root.verbs = sub.choices  # each verb's own parser, for main's errors
    debug = debug_flag(argparse.ArgumentParser(add_help=False))  # every verb has --debug
    train.register(sub)
    generate.register(sub)
    tokenize.register(sub, debug)
    evaluate.register(sub, debug)
    info.register(sub, debug)
    convert.register(sub, debug)
    _ladder_and_serve(sub, debug)
    chat.register(sub, debug)
    inspection.register(sub, debug)
    bench = sub.add_parser("bench", add_help=False,
                           help="measure training speed and quality per time here (repytilian bench --help)")
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)
    bench.set_defaults(handler=bench_command)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # its own parser takes every argument after the word
        return run(bench_command, argparse.Namespace(bench_args=argv[1:], debug="--debug" in argv))
    if not argv:  # the commands and what each does, not argparse's "the following arguments are required"
        parser().print_help(sys.stderr)
        print("\nrepytilian COMMAND --help tells more of one", file=sys.stderr)
        return 2
    root = parser()
    try:  # nanoGPT's config files and `--batch_size=32`, as training.py takes them
        if argv[0] == "train":
            argv = argv[:1] + our_arguments(argv[1:])
        elif argv[0] == "generate":
            argv = argv[:1] + with_sample_flags(argv[1:])
    except RepytilianError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    args, extra = root.parse_known_args(argv)
    if extra:  # with the command's own usage: argparse's is the root's, which shows none of its flags
        root.verbs[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    return run(args.handler, args)
