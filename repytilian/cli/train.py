"""`repytilian train` and the seed's `training.py`: flags in, `api.train` called, its events in words.

The flags become a `TrainOptions` once (`train_options`); `speak` words the library's events for
a terminal, between the progress bar's frames, with what only the command line knows (the
command that resumes a stopped run, the one that samples the saved model).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence

from ..config import ARCHS, DEFAULT_MODEL_DIR, field_type
from ..errors import EXIT_USER_ERROR, RepytilianError
from ..runtime.paths import progress_wanted
from .common import (
    dtype_name,
    nonnegative_int,
    positive_int,
    run,
    say,
    seconds,
    seed_device_debug,
    speak,
)
from .flags import FIELD_FLAGS, flag_fields, parse_set_options, with_our_flags
from .nanogpt_config import with_config_files


def _flag_argument(cls: type, f: dataclasses.Field) -> dict:
    """argparse's arguments for a config field's flag: its type, choices, help and metavar."""
    kind, _ = field_type(cls, f.name)
    meta = f.metadata
    argument = {"dest": f.name, "default": None, "help": meta.get("help") or None}
    if kind is bool:
        return {**argument, "action": "store_const", "const": True}
    argument["type"] = positive_int if kind is int and meta.get("minimum") == 1 else kind
    if meta.get("metavar") == "SECONDS":  # --budget 900, or 15m
        argument["type"] = seconds
    if f.name == "dtype":  # --dtype bf16
        argument["type"] = dtype_name
    for key in ("choices", "metavar"):
        if key in meta:
            argument[key] = meta[key]
    return argument


def add_data_and_settings(parser: argparse.ArgumentParser, heading: str | None = None) -> None:
    root = parser
    if heading:  # generate.py: the same flags, under their own heading
        parser = root.add_argument_group(heading)
    parser.add_argument("-d", "--datafile", "--data", dest="datafile", help="a text file to train on")
    parser.add_argument("-p", "--datapath", help="a folder: every text file under it is training data")
    parser.add_argument("--text-field", metavar="NAME", default=None,
                        help="-d/-p JSONL or Parquet text: the field (column) of each record to train on (default text)")
    parser.add_argument("--chat", metavar="FILE",
                        help="fine-tune -l MODEL to chat on these conversations: JSONL of {\"messages\": [...]} "
                             "(or a folder of them, or Parquet with a messages column); the last tenth validates")
    parser.add_argument("--chat-val", metavar="FILE", help="--chat: validate on these conversations instead")
    parser.add_argument("-s", "--settings", default="default",
                        help="model/optimiser preset: tiny, default, speedrun, quarter (15 minutes of the most "
                             "quality on 2 cores), hyper, auto")
    parser.add_argument("--arch", choices=tuple(ARCHS), type=str.lower, default=None,
                        help="classic: the lecture's GPT (default, but -s quarter's is modern); modern: rotary "
                             "positions, RMSNorm, SwiGLU, no biases (Llama's layout)")
    parser.add_argument("-i", "--iterations", default=None,
                        help="how long to train: quick, default, long, forever (until stopped), or a number of "
                             "steps (as --iters)")
    parser.add_argument("-z", "--tokenizer", default=None,
                        help="characters (default), words, bpe, json (or jsontoken), tiktoken (o200k_base), gpt2, or "
                             "spaced_words (the original Repytilian's words: split at whitespace)")
    parser.add_argument("--encoding", default=None, metavar="NAME",
                        help="-z tiktoken: which tiktoken encoding (default o200k_base, as the original Repytilian)")
    parser.add_argument("--vocab-size", type=positive_int, default=None,
                        help="vocabulary size for -z bpe (default 512)")
    parser.add_argument("--json-key", help="-z json: the key of a top-level object that holds the sequences")
    parser.add_argument("--json-val-key", help="-z json: the key whose sequences are the validation split")
    parser.add_argument("--json-layout", choices=("sequence", "sequences"), default=None,
                        help="-z json: read an array of arrays as one sequence of list tokens, or as many "
                             "sequences (default: many sequences, with a note)")
    group = root.add_argument_group("overrides (any preset field)")
    for cls, f in flag_fields():  # one flag per config field that has one, typed by the field
        group.add_argument(FIELD_FLAGS[f.name], **_flag_argument(cls, f))
    group.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                       help="set any field, e.g. --set n_layer=6 --set warmup_iters=50")
    parser.add_argument("--measure-dtype", action="store_true",
                        help="--dtype auto: measure float32 against bf16 again on this machine for this shape, "
                             "replacing the remembered choice")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    parser.add_argument("--wandb", action="store_true",
                        help="log to Weights & Biases (pip install wandb; WANDB_MODE=offline: no network)")
    parser.add_argument("--tensorboard", metavar="DIR", help="write TensorBoard logs to DIR (pip install tensorboard)")




def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-l", "--load", help="continue training a saved model folder (exactly where it stopped)")
    parser.add_argument("-m", "--model", "--out", dest="model", default=DEFAULT_MODEL_DIR,
                        help=f'folder to save the model in (default {DEFAULT_MODEL_DIR}); "" saves nothing')
    parser.add_argument("--lora", type=positive_int, default=None, metavar="RANK",
                        help="with -l: fine-tune low-rank adapters of this rank (and the token embeddings) instead "
                             "of every weight, for a large base on a CPU; merged into the weights at save")
    parser.add_argument("-t", "--tokens", type=nonnegative_int, default=300,
                        help="print a sample of this many tokens after training (0: none; default 300)")
    add_data_and_settings(parser)
    seed_device_debug(parser)


def train_options(args: argparse.Namespace, out: str | None, load: str | None):
    from ..api import TrainOptions
    from ..data.corpus import DataSource

    overrides = parse_set_options(args.set)
    for _, f in flag_fields():
        if getattr(args, f.name) is not None:
            overrides[f.name] = getattr(args, f.name)
    iterations = args.iterations
    if iterations is not None and iterations.strip().isdigit():  # `-i 500`: a number of steps, as --iters 500
        if overrides.get("max_iters", int(iterations)) != int(iterations):
            raise RepytilianError(f"-i {iterations} and --iters {overrides['max_iters']} disagree: give one of them")
        overrides["max_iters"], iterations = int(iterations), None
    data = None
    if args.chat_val and not args.chat:
        raise RepytilianError("--chat-val goes with --chat FILE (the conversations to fine-tune on)")
    if args.chat:
        if args.datafile or args.datapath:
            raise RepytilianError("give --chat (conversations) or -d/-p (text), not both")
        data = DataSource("chat", args.chat, chat_val=args.chat_val)
    elif args.datafile or args.datapath:
        data = dataclasses.replace(DataSource.from_args(args.datafile, args.datapath), json_key=args.json_key,
                                   json_val_key=args.json_val_key, json_layout=args.json_layout,
                                   text_field=args.text_field)
    elif args.json_key or args.json_val_key or args.json_layout:
        raise RepytilianError("--json-key, --json-val-key and --json-layout need JSON data: give -d FILE or -p DIR")
    return TrainOptions(
        data=data, tokenizer=args.tokenizer, tokenizer_options={"vocab_size": args.vocab_size, "encoding": args.encoding},
        settings=args.settings, arch=args.arch, iterations=iterations,
        overrides=overrides, out=out, load=load, device=args.device, seed=args.seed,
        progress=not args.no_progress and progress_wanted(),
        wandb=args.wandb, tensorboard=args.tensorboard, measure_dtype=args.measure_dtype,
        lora=getattr(args, "lora", None),
    )


def train_command(args: argparse.Namespace) -> int:
    from ..api import train
    from .generate import write_generation

    result = train(train_options(args, out=args.model or None, load=args.load), on_event=speak)
    if args.tokens and not result.stopped_by and result.main:
        if getattr(args, "chat", None):
            _sample_answer(result.language_model, args.chat_val or args.chat, args.tokens, args.seed)
            return 0
        say("--- sample ---")
        write_generation(result.language_model, "", args.tokens, {"seed": args.seed})
    return end_of_torchrun_process(0)


def end_of_torchrun_process(code: int) -> int:
    """Under torchrun (WORLD_SIZE above 1): end this process here, its output flushed, rather than in
    the interpreter's teardown. There c10d's and Gloo's threads were torn down, and now and then a
    finished process aborted ("terminate called without an active exception": 1 two-process job in
    5 to 15 on a busy 2-core machine), so torchrun failed the whole job and stopped the others,
    whether or not the model was saved. Everything a run writes is written and closed by now."""
    if int(os.environ.get("WORLD_SIZE") or 1) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _sample_answer(lm, conversations: str, tokens: int, seed: int | None) -> None:
    """After a chat fine-tune: the model's answer to the last conversation's last question."""
    from ..data.conversations import read_conversations

    messages = read_conversations(conversations)[0][-1].messages
    asked = messages[: max(i for i, (role, _) in enumerate(messages) if role == "assistant")]
    if not asked:  # a conversation that the assistant opens: nothing was asked
        return
    say("--- a sample answer (the last conversation's last question) ---")
    print(f"you> {asked[-1][1]}\nmodel> {lm.chat(asked, tokens, seed=seed)}", flush=True)


def register(sub) -> None:
    parser = sub.add_parser("train", help="train a model (the same flags as training.py)")
    add_train_arguments(parser)
    parser.set_defaults(handler=train_command)


def training_script(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="training.py", description="Train a GPT language model on text")
    add_train_arguments(parser)
    try:
        words = our_arguments(sys.argv[1:] if argv is None else argv)
    except RepytilianError as e:  # a config file that cannot be read
        say(f"error: {e}")
        return EXIT_USER_ERROR
    return run(train_command, parser.parse_args(words))


def our_arguments(argv: Sequence[str]) -> list[str]:
    """The command line in this tool's flags: nanoGPT's config files and `--name=value` read (nanogpt_config.py)."""
    return with_our_flags(with_config_files(list(argv), say))
