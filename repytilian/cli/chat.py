"""`repytilian chat -m DIR` (and `generate.py -m DIR --interactive`): talk to a model in a loop.

The model is loaded once. Each answer streams as it is sampled; the conversation so far is the
prompt of the next answer, in the model's own chat format where it was fine-tuned to chat, else in
a script (chat_format.py, as the server's chat API); its oldest turns are left out when it
outgrows the context (LanguageModel.chat_prompt). Ctrl+C stops the answer being written, not the
program; /quit or Ctrl+D ends it.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from ..engine import Ended, Token
from ..errors import RepytilianError
from ..sampling import SamplingOptions
from .common import (
    device_flag,
    last_flag,
    model_folder_argument,
    nonnegative_int,
    open_model,
    say,
)

HELP = ("commands: /temp T (temperature, 0 is greedy), /topk K (0: off), /reset (forget the conversation), "
        "/quit (or Ctrl+D); Ctrl+C stops an answer")


def chat_loop(lm, max_tokens: int = 200, sampling: SamplingOptions | None = None, stop: str | None = None,
              stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    """`stop`: where an answer ends, instead of a script's blank line (the end token of a model's
    own chat format ends it anyway)."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    if lm.tokenizer.input_format == "json":
        raise RepytilianError("this model's tokens are JSON values, not text: it is not a chat model "
                              "(generate.py -c '[...]' continues a sequence)")
    sampling = sampling or SamplingOptions()
    settings: dict[str, Any] = {"temperature": sampling.temperature, "top_k": sampling.top_k, "top_p": sampling.top_p}
    seed = sampling.seed
    turns: list[tuple[str, str]] = []
    answers = 0
    folder = lm.path.parent if lm.path is not None and lm.best else lm.path  # best/ is its run's model
    name = folder.name if folder is not None else "the model"
    form = ("its own chat format (it was fine-tuned to chat)" if lm.chat_format is not None else
            "a script (USER: / ASSISTANT:), as it was trained on plain text, not fine-tuned to chat")
    say(f"chatting with {name} ({lm.model.num_params() / 1e6:.2f}M parameters, context "
        f"{lm.model.config.block_size} tokens) in {form}. {HELP}")
    while True:
        try:
            stdout.write("you> ")
            stdout.flush()
            line = stdin.readline()
        except KeyboardInterrupt:
            stdout.write("\n(/quit or Ctrl+D to leave)\n")
            continue
        if not line:  # Ctrl+D, or the end of piped input
            stdout.write("\n")
            return 0
        text = line.rstrip("\n")
        if text.startswith("/"):
            if _command(text, settings, turns, stdout):
                return 0
            continue
        if not text.strip():
            continue
        turns.append(("user", text))
        answer: list[str] = []
        prompt = None
        try:
            prompt = _prompt(lm, turns, stop)  # before "model> ": its notes (turns left out) are not the answer
            stdout.write("model> ")
            stdout.flush()
            _answer(lm, prompt, max_tokens, {**settings, "seed": None if seed is None else seed + answers},
                    answer, stdout)
        except KeyboardInterrupt:
            stdout.write(" [stopped]")
        except RepytilianError as e:  # e.g. a character the model has never seen
            turns.pop()
            after_prompt = "\n" if prompt is not None else ""  # "model> " was written: a line of its own
            stdout.write(f"{after_prompt}(error: {e})\n")
            continue
        answers += 1
        turns.append(("assistant", "".join(answer)))
        stdout.write("\n")
        stdout.flush()


def _prompt(lm, turns: list, stop: str | None) -> tuple[list[int], list[str]]:
    """The ids that ask for the answer to `turns`, and the strings that end it."""
    ids, stops = lm.chat_prompt(turns)
    if stop is not None:
        stops = [stop] if lm.chat_format is None else [*stops, stop]
    return ids, stops


def _answer(lm, prompt: tuple[list[int], list[str]], max_tokens: int, sampling: dict[str, Any], answer: list[str],
            stdout: TextIO) -> None:
    """Stream the model's answer to the prompt to stdout, keeping its pieces in `answer`."""
    ids, stops = prompt
    for event in lm.engine.run(lm.request("", max_tokens, prompt_ids=ids, stop=stops, **sampling)):
        if isinstance(event, (Token, Ended)) and event.text:
            answer.append(event.text)
            stdout.write(event.text)
            stdout.flush()


def _command(text: str, settings: dict[str, Any], turns: list, stdout: TextIO) -> bool:
    """Run a /command; True to quit."""
    word, _, value = text.partition(" ")
    try:
        if word in ("/quit", "/exit", "/q"):
            return True
        if word == "/reset":
            turns.clear()
            stdout.write("(the conversation is forgotten)\n")
        elif word == "/temp":
            t = float(value)
            if not t >= 0:
                raise ValueError
            settings["temperature"] = t
            stdout.write(f"(temperature {t:g})\n")
        elif word == "/topk":
            k = int(value)
            if k < 0:
                raise ValueError
            settings["top_k"] = k or None
            stdout.write(f"(top-k {k or 'off'})\n")
        else:
            stdout.write(f"({HELP})\n")
    except ValueError:
        # (-1 is a number: "needs a number" left the user guessing)
        kind, example = ("a number", "0.8") if word == "/temp" else ("a whole number", "40")
        stdout.write(f"({word} needs {kind}, 0 or more: {word} {example})\n")
    return False


def chat_command(args: argparse.Namespace) -> int:
    from .generate import sampling_options

    sampling = sampling_options(args)
    lm = open_model(args)
    lm.engine.compile = args.compile or None  # without it, a step built before is still used
    return chat_loop(lm, args.tokens or 200, sampling, stop=args.stop)


def register(sub, debug: argparse.ArgumentParser) -> None:
    from .generate import add_sampling_arguments

    parser = sub.add_parser("chat", parents=[debug], help="talk to a model in a loop (/temp, /topk, /reset, /quit)")
    model_folder_argument(parser)
    parser.add_argument("-t", "--tokens", type=nonnegative_int, default=200, help="most tokens an answer may have")
    add_sampling_arguments(parser)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--stop", default=None, metavar="TEXT",
                        help="where an answer ends (default: the model's end of turn; for a model not "
                             "fine-tuned to chat, a blank line, the end of a speech)")
    parser.add_argument("--compile", action="store_true",
                        help="build the decoding step ahead of time (~30 s the first time for a model, then kept): "
                             "answers come faster on a CPU")
    device_flag(parser)
    last_flag(parser)
    parser.set_defaults(handler=chat_command)
