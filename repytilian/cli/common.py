"""What the command line's verbs share: number arguments, the flags every verb has, opening the
model a verb works on, and running a verb so that a user's error is one line, never a traceback."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from ..config import DEFAULT_MODEL_DIR
from ..errors import EXIT_USER_ERROR, RepytilianError
from ..events import notes_to
from .flags import in_flags
from .progress import Bars

_BARS = Bars()


def say(text: str) -> None:
    """A line for the person at the terminal (stderr: stdout is for what the verb produces)."""
    print(text, file=sys.stderr, flush=True)


def nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def positive_int(text: str) -> int:
    value = nonnegative_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def debug_flag(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks (for developers)")
    return parser


def seed_device_debug(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=None, help="random seed (same seed, same machine: same result)")
    device_flag(parser)
    debug_flag(parser)


def device_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")


def model_flag(parser: argparse.ArgumentParser, extra: str = "") -> None:
    parser.add_argument("-m", "--model", default=DEFAULT_MODEL_DIR,
                        help=f"model folder (default {DEFAULT_MODEL_DIR}){extra}")


def last_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--last", action="store_true",
                        help="the run's last model, even where it kept a better one in best/ (which is the default)")


def open_model(args: argparse.Namespace, verb: str = "sampling"):
    """The model a command works on: the run's best where it kept a better one, and says so."""
    from ..api import load_model

    lm = load_model(args.model, device=getattr(args, "device", "auto"),
                    which="last" if getattr(args, "last", False) else "best")
    if lm.best:
        b = lm.best
        last = f"step {b['last_step']}, " if b.get("last_step") is not None else ""
        say(f"note: {verb} {Path(args.model) / 'best'}, the best model of this run (step {b['step']}, whole-split "
            f"val loss {b['val_loss_full']:.4f}; the last model, {last}{b['last_val_loss_full']:.4f}: --last)")
    return lm


def speak(event) -> None:
    """The library's events for a person: progress as bars (progress.py), the rest in words on stderr
    between the bars' frames, with what only the command line knows: the command that resumes a
    stopped run, and the one that samples a saved model."""
    from tqdm import tqdm

    from ..events import NothingSaved, Progress, Saved, Stopped

    if isinstance(event, Progress):
        _BARS(event)
        return
    text = event.words()
    if isinstance(event, Stopped):
        again = f" -m {event.out}" if event.out else ' -m ""'
        if event.processes > 1:
            text += (f"\nresume with: torchrun --nproc_per_node {event.processes} training.py -l {event.path}{again}"
                     f"\n(on any number of processes, or on one: python3 training.py -l {event.path}{again})")
        else:
            text += f"\nresume with: python3 training.py -l {event.path}{again}"
    elif isinstance(event, Saved):
        text += f"; generate with: python3 generate.py -m {event.path}"
    elif isinstance(event, NothingSaved):
        text = 'nothing saved (-m "")'
    tqdm.write(text, file=sys.stderr)
    sys.stderr.flush()



def run(handler: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Call a verb; user errors become one line on stderr and exit code 2."""
    try:
        with notes_to(speak):
            return handler(args)
    except RepytilianError as e:
        if getattr(args, "debug", False):
            raise
        say(f"error: {in_flags(e)}")
        return EXIT_USER_ERROR
    except KeyboardInterrupt:  # outside training (which saves on Ctrl+C): just stop
        say("\ninterrupted")
        return 130
    except BrokenPipeError:  # `generate.py | head`: the reader left, which is fine
        sys.stderr.close()
        return 0
