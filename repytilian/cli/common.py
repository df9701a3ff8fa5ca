"""What the command line's verbs share: number arguments, the flags every verb has, opening the
model a verb works on, and running a verb so that a user's error is one line, never a traceback."""
from __future__ import annotations

import argparse
import re
import shlex
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from ..config import DEFAULT_MODEL_DIR
from ..errors import EXIT_USER_ERROR, RepytilianError
from ..events import notes_to
from .flags import in_flags, in_flags_text
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


TIME_UNITS = {"h": 3600.0, "min": 60.0, "m": 60.0, "s": 1.0}
TIME_PART = r"(\d+(?:\.\d+)?)\s*(h|min|m|s)"


def seconds(text: str) -> float:
    """A time in seconds, or as people write one: 90s, 15m, 1.5h, 1h30m (`--budget 15m`)."""
    try:
        return float(text)
    except ValueError:
        pass
    spoken = text.strip().lower()
    parts = re.findall(TIME_PART, spoken)
    if not parts or re.sub(TIME_PART, "", spoken).strip():
        raise argparse.ArgumentTypeError(f"expected seconds, or a time such as 90s, 15m or 1h30m, got {text!r}")
    return sum(float(number) * TIME_UNITS[unit] for number, unit in parts)


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


# Number formats as people shorten them (`--dtype bf16`), in torch's names
DTYPE_ALIASES = {"bf16": "bfloat16", "fp32": "float32", "f32": "float32", "float": "float32", "fp16": "float16",
                 "f16": "float16", "half": "float16"}


def dtype_name(text: str) -> str:
    return DTYPE_ALIASES.get(text.strip().lower(), text.strip().lower())


def model_folder_argument(parser: argparse.ArgumentParser) -> None:
    """The model folder as a word after the command (`repytilian info models/x`) or, as every
    command takes it, as -m; `run` settles which before the command runs."""
    parser.add_argument("model_dir", nargs="?", default=None, metavar="MODEL", help="model folder (or as -m)")
    model_flag(parser)


def _settle_model_folder(args: argparse.Namespace) -> None:
    word = getattr(args, "model_dir", None)
    if word:
        if args.model not in (DEFAULT_MODEL_DIR, word):
            raise RepytilianError(f"two model folders given ({word} and -m {args.model}): give one")
        args.model = word


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
    text = in_flags_text(event.words(), getattr(event, "settings", ()))
    if isinstance(event, Stopped):
        again = f" -m {quote(event.out)}" if event.out else ' -m ""'
        if event.processes > 1:
            text += (f"\nresume with: torchrun --nproc_per_node {event.processes} training.py -l {quote(event.path)}{again}"
                     f"\n(on any number of processes, or on one: python3 training.py -l {quote(event.path)}{again})")
        else:
            text += f"\nresume with: python3 training.py -l {quote(event.path)}{again}"
    elif isinstance(event, Saved):
        text += f"; generate with: python3 generate.py -m {quote(event.path)}"
    elif isinstance(event, NothingSaved):
        text = 'nothing saved (-m "")'
    tqdm.write(text, file=sys.stderr)
    sys.stderr.flush()


def repytilian_command() -> str:
    """How to run the `repytilian` command from here, for advice that must work when pasted: its name
    where that is on PATH and is this installation's; otherwise this environment's own script (after
    `make install` it is .venv/bin/repytilian, which is not on PATH until the venv is activated)."""
    bin_dir = Path(sys.executable).parent
    mine = next((p for p in (bin_dir / "repytilian", bin_dir / "repytilian.exe") if p.is_file()), None)
    found = shutil.which("repytilian")
    if mine is None:
        return "repytilian" if found else f"{shlex.quote(sys.executable)} -m repytilian"
    if found and Path(found).resolve() == mine.resolve():
        return "repytilian"
    return shown_path(mine)


def quote(path: str | Path) -> str:
    """A path as one word of a command a user pastes (a folder named "my model" is two words bare)."""
    return shlex.quote(str(path))


def shown_path(path: Path) -> str:
    """`path` as a user types it here: relative to the current folder when inside it."""
    try:
        return quote(path.relative_to(Path.cwd()))
    except ValueError:
        return quote(path)


def advice(error: RepytilianError) -> str:
    """A library error in the command line's words: settings as flags, and, where a command would
    mend it, that command as it runs here."""
    from ..store.missing import LegacyFolder, MissingModel, shipped_example

    if isinstance(error, MissingModel):
        path = error.path
        if error.advice == "default":
            shipped = shipped_example()
            return (f"no model at {path}; train it first (Tiny Shakespeare, the default): python3 training.py"
                    + (f"; or use a model that ships with Repytilian: -m {shown_path(shipped)}" if shipped else ""))
        if error.advice == "own":
            return (f"no model at {path}; train one there on your own text: python3 training.py -d YOUR_TEXT.txt "
                    f"-m {quote(path)} (or -p FOLDER for a folder of text files)")
        if error.advice == "original":
            return (str(error).split(" (interop.convert")[0] +
                    f": {repytilian_command()} import-legacy ORIGINAL_FOLDER {quote(path)}")
    if isinstance(error, LegacyFolder):
        return (f"{error.path} is a model folder of the original Repytilian, saved as pickles, which can run code "
                f"when loaded, so it is not loaded as it is. Convert it (safely) with: "
                f"{repytilian_command()} import-legacy {quote(error.path)} {quote(error.converted)}")
    return in_flags(error)


def run(handler: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Call a verb; user errors become one line on stderr and exit code 2."""
    try:
        _settle_model_folder(args)
        with notes_to(speak):
            return handler(args)
    except RepytilianError as e:
        if getattr(args, "debug", False):
            raise
        say(f"error: {advice(e)}")
        return EXIT_USER_ERROR
    except KeyboardInterrupt:  # outside training (which saves on Ctrl+C): just stop
        say("\ninterrupted")
        return 130
    except BrokenPipeError:  # `generate.py | head`: the reader left, which is fine
        sys.stderr.close()
        return 0
