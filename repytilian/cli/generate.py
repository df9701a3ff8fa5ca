"""`repytilian generate` and the seed's `generate.py`: text from a model folder (or from a model
trained first, with -m ""), to the screen and optionally to a file or a folder of files.

Generation is the engine's (engine.py, through `LanguageModel`); this module decides what goes
where: one sample streams to the screen as it is sampled; -t and -ft take their texts from one
run, the shorter the first tokens of the longer.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import DEFAULT_MODEL_DIR
from ..engine import Begun, Token
from ..errors import RepytilianError
from ..sampling import SamplingOptions
from ..store.lock import check_writable
from ..tokenizers import UnknownTokensError
from .common import (
    last_flag,
    nonnegative_int,
    open_model,
    run,
    say,
    seconds,
    seed_device_debug,
)
from .flags import with_sample_flags
from .train import add_data_and_settings, speak, train_options


def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-m", "--model", default=DEFAULT_MODEL_DIR,
                        help=f'model folder (default {DEFAULT_MODEL_DIR}); "" trains a model first and saves nothing')
    parser.add_argument("-t", "--tokens", type=nonnegative_int, default=500, help="tokens to generate (default 500)")
    parser.add_argument("--interactive", action="store_true",
                        help="talk to the model in a loop, as repytilian chat (-t: tokens per answer)")
    parser.add_argument("-c", "--continue", dest="prompt", default="", help="continue generation from this text")
    parser.add_argument("--prompt-file", metavar="FILE", default=None,
                        help="continue generation from the text of this file (UTF-8), for prompts too long to type")
    parser.add_argument("-f", "--filename", help="also write the generated text to this file (a folder, "
                                                 "ending in /: one file per sample)")
    parser.add_argument("-ft", "--filetokens", type=nonnegative_int, default=None,
                        help="tokens to write into the file, if different from -t")
    group = parser.add_argument_group("sampling")
    add_sampling_arguments(group)
    group.add_argument("--num-samples", type=int, default=1, help="how many samples, generated as one batch")
    group.add_argument("--stop", action="append", default=[], metavar="STRING",
                        help="stop a sample where this text appears (repeatable; the text itself is not shown)")
    group.add_argument("--max-time", type=seconds, default=None, metavar="SECONDS",
                       help="stop after this many seconds (or 90s, 15m)")
    group.add_argument("--no-cache", action="store_true",
                        help="recompute the whole context for every token (slow; for comparison)")
    last_flag(parser)
    seed_device_debug(parser)
    add_data_and_settings(parser, 'with -m "" (train a model first; as in training.py)')


def add_sampling_arguments(group) -> None:
    """--temperature, --top-k, --top-p: absent, each takes SamplingOptions's default (as in Python and the server)."""
    d = SamplingOptions()
    group.add_argument("--temperature", type=float, default=None,
                       help=f"0 is greedy (always the likeliest token); higher is more varied (default {d.temperature})")
    group.add_argument("--top-k", type=int, default=None,
                       help=f"sample among the k likeliest tokens (default {d.top_k}, or the whole vocabulary if "
                            "smaller; 0: off, every token)")
    group.add_argument("--top-p", type=float, default=None,
                       help=f"sample among the likeliest tokens whose probabilities add up to p (default {d.top_p:g}: all)")


def sampling_options(args: argparse.Namespace) -> SamplingOptions:
    given = {name: getattr(args, name) for name in ("temperature", "top_k", "top_p") if getattr(args, name) is not None}
    options = SamplingOptions(**given, seed=getattr(args, "seed", None))
    options.validate()  # before any training or loading, so a typo costs nothing
    return options


def generate_command(args: argparse.Namespace) -> int:
    from ..api import train
    from ..sampling import check_lengths

    sampling = sampling_options(args)
    check_lengths(max(args.tokens, args.filetokens or 0), args.num_samples)
    if args.max_time is not None and args.max_time <= 0:
        raise RepytilianError(f"--max-time must be more than 0 seconds, got {args.max_time}")
    if args.prompt_file is not None:
        args.prompt = _read_prompt_file(args.prompt_file, args.prompt)
    if args.filename:
        _check_output(args.filename)
    if not args.model:  # the seed's `generate.py -m ""`: train, show a sample, save nothing
        lm = train(train_options(args, out=None, load=None), on_event=speak).language_model
    else:
        lm = open_model(args)
    lm.engine.compile = args.compile or None  # --compile builds the decoding step (decode_compiled.py)
    if args.compile and args.num_samples > 1:  # and the one for several rows, which samples decode through
        lm.engine.prepare(rows=True)
    if args.interactive:
        from .chat import chat_loop

        return chat_loop(lm, args.tokens or 200, sampling, stop=args.stop[0] if args.stop else None)
    if max(args.tokens, args.filetokens or 0) == 0:  # printed nothing at all, as the seed's did
        say("note: -t 0 asks for no tokens, so nothing is generated (-t sets how many)")
    options = {"temperature": sampling.temperature, "top_k": sampling.top_k, "top_p": sampling.top_p,
               "seed": sampling.seed, "stop": args.stop, "max_time": args.max_time, "use_cache": not args.no_cache}
    try:
        write_generation(lm, args.prompt, args.tokens, options, args.filename, args.filetokens, args.num_samples)
    except UnknownTokensError as e:
        if "\\n" not in (args.prompt or ""):
            raise
        # -c "ROMEO:\nJULIET:" reaches the model as a backslash and an n: the shell keeps them as typed
        raise RepytilianError(f"{e}. A line break typed as \\n is a backslash and an n to the shell: write "
                              "-c $'ROMEO:\\nJULIET:' (bash, zsh), or put the prompt in a file for --prompt-file") from None
    return 0


def write_generation(lm, prompt: str, tokens: int, sampling: dict[str, Any], filename: str | None = None,
                     file_tokens: int | None = None, num_samples: int = 1) -> None:
    """`tokens` new tokens to stdout and `file_tokens` to `filename` from one sampling run, so the
    shorter output is a prefix of the longer. One sample streams to the screen as it is sampled."""
    file_tokens = (tokens if file_tokens is None else file_tokens) if filename else 0
    folder = bool(filename) and (filename.endswith(("/", os.sep)) or Path(filename).is_dir())
    request = lm.request(prompt, max(tokens, file_tokens), num_samples=num_samples, **sampling)
    stop = sampling.get("stop", ())
    streamed = _run(lm, request, stream_up_to=tokens if num_samples == 1 else 0)

    def texts(limit: int) -> list[str]:
        return [lm.shown(prompt, request.prompt_ids, ids[:limit], stop) for ids in streamed.ids]

    if tokens:
        screen = texts(tokens)
        if num_samples == 1:  # the rest of what was streamed (text held back, closing syntax)
            rest = screen[0][len(streamed.text):] if screen[0].startswith(streamed.text) else ""
            sys.stdout.write(rest + "\n")
        else:
            sys.stdout.write(_joined(screen, lm.tokenizer.input_format == "json") + "\n")
        sys.stdout.flush()
    if folder:
        _write_sample_files(Path(filename), texts(file_tokens), lm.tokenizer.input_format, file_tokens)
    elif filename:
        _write_file(filename, _joined(texts(file_tokens), lm.tokenizer.input_format == "json"))
        written = min(len(streamed.ids[0]), file_tokens) if num_samples == 1 else file_tokens
        several = f" per sample ({num_samples} samples)" if num_samples > 1 else ""
        say(f"wrote {'up to ' if num_samples > 1 else ''}{written} tokens{several} to {filename}"
            + (" (stopped by Ctrl+C: what was sampled until then)" if streamed.stopped else ""))
    if streamed.stopped:
        raise KeyboardInterrupt


class _Streamed:
    def __init__(self, samples: int):
        self.ids: list[list[int]] = [[] for _ in range(samples)]
        self.text = ""  # what reached the screen while sampling
        self.stopped = False  # by Ctrl+C


def _run(lm, request, stream_up_to: int) -> _Streamed:
    """The request's new ids per sample; one sample's first `stream_up_to` tokens go to the screen as they come."""
    out = _Streamed(request.num_samples)
    with _ctrl_c_stops(out):
        for event in lm.engine.run(request):
            piece = ""
            if isinstance(event, Token):
                out.ids[event.sample].append(event.id)
                piece = event.text if event.index <= stream_up_to else ""
            elif isinstance(event, Begun) and stream_up_to:
                piece = event.text
            if piece:
                out.text += piece
                sys.stdout.write(piece)
                sys.stdout.flush()
            if out.stopped:
                break
    return out


@contextlib.contextmanager
def _ctrl_c_stops(out: _Streamed):
    """Ctrl+C stops the sampling at a token's end, so what was sampled so far is still written where it
    was asked for, the screen's text and the file's alike (a KeyboardInterrupt could land between a
    token's id and its text). Only the main thread handles signals."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        out.stopped = True

    before = signal.signal(signal.SIGINT, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


def _joined(texts: list[str], json: bool) -> str:
    if len(texts) == 1:
        return texts[0]
    if json:  # one valid JSON document: an array of samples
        return "[\n" + ",\n".join(texts) + "\n]"
    return "\n\n---\n\n".join(texts)


def _check_output(filename: str) -> None:
    """-f's place, before a token is sampled: a long generation was lost at the end to a path that
    could not be written. A pipe or a device (/dev/stdout) is written to as it is."""
    path = Path(filename)
    if path.exists() and not path.is_file() and not path.is_dir():
        return
    check_writable(path / "sample_1.txt" if path.is_dir() else path, "write the samples to", "give -f another place")


def _write_file(filename: str, text: str) -> None:
    """The samples into `filename`, its folders made as -f DIR/ makes them; a file is replaced whole
    (never left half-written), anything else (/dev/stdout, a pipe) written to as it is."""
    from ..runtime.fileio import atomic_write_bytes

    path = Path(filename)
    try:
        if path.exists() and not path.is_file():
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
        else:
            atomic_write_bytes(path, text.encode("utf-8"))
    except OSError as e:
        raise RepytilianError(f"cannot write {filename}: {e.strerror or e}") from None


def _write_sample_files(folder: Path, texts: list[str], input_format: str, file_tokens: int) -> None:
    """-f DIR/: each sample in a file of its own (sample_1.txt, ...; .json for JSON-token models)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RepytilianError(f"cannot write into {folder}: {e.strerror or e}") from None
    suffix = ".json" if input_format == "json" else ".txt"
    width = len(str(len(texts)))
    names = []
    for i, text in enumerate(texts, start=1):
        path = folder / f"sample_{i:0{width}d}{suffix}"
        _write_file(str(path), text)
        names.append(path.name)
    say(f"wrote {len(texts)} sample{'s' if len(texts) > 1 else ''} of up to {file_tokens} tokens to {folder}/ "
        f"({names[0]}{' ... ' + names[-1] if len(names) > 1 else ''})")


def _read_prompt_file(path: str, prompt: str) -> str:
    if prompt:
        raise RepytilianError("give the prompt either with -c TEXT or with --prompt-file FILE, not both")
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RepytilianError(f"--prompt-file: {path} does not exist") from None
    except IsADirectoryError:
        raise RepytilianError(f"--prompt-file: {path} is a folder, not a file") from None
    except UnicodeDecodeError:
        raise RepytilianError(f"--prompt-file: {path} is not UTF-8 text") from None
    except OSError as e:
        raise RepytilianError(f"--prompt-file: cannot read {path}: {e.strerror or e}") from None


def register(sub) -> None:
    parser = sub.add_parser("generate", help="generate text from a model (the same flags as generate.py)")
    add_generate_arguments(parser)
    parser.set_defaults(handler=generate_command)


def generate_script(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="generate.py", description="Generate text from a trained model")
    add_generate_arguments(parser)
    return run(generate_command, parser.parse_args(with_sample_flags(sys.argv[1:] if argv is None else argv)))
