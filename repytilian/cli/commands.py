"""Command lines: `repytilian train|generate`, and the seed-compatible `training.py` / `generate.py`.

This module only parses arguments and calls `repytilian.api`; it also turns a `RepytilianError`
into one readable message and exit code 2 (`--debug` shows the traceback instead).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .. import __version__
from ..config import (
    ARCHS,
    DEFAULT_MODEL_DIR,
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_K,
    field_type,
    flag_fields,
)
from ..errors import EXIT_USER_ERROR, RepytilianError
from ..runtime.paths import progress_wanted
from .flags import in_flags
from .ladder import add_arguments as add_ladder_arguments
from .ladder import ladder_command
from .serve import add_serve_arguments, serve_command


def _nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def _positive_int(text: str) -> int:
    value = _nonnegative_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _debug_flag(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks (for developers)")
    return parser


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=None, help="random seed (same seed, same machine: same result)")
    parser.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
    _debug_flag(parser)


def _flag_argument(cls: type, f: dataclasses.Field) -> dict:
    """argparse's arguments for a config field's flag: its type, choices, help and metavar."""
    kind, _ = field_type(cls, f.name)
    meta = f.metadata
    argument = {"dest": f.name, "default": None, "help": meta.get("help") or None}
    if kind is bool:
        return {**argument, "action": "store_const", "const": True}
    argument["type"] = _positive_int if kind is int and meta.get("minimum") == 1 else kind
    for key in ("choices", "metavar"):
        if key in meta:
            argument[key] = meta[key]
    return argument


def _add_data_and_settings(parser: argparse.ArgumentParser, heading: str | None = None) -> None:
    root = parser
    if heading:  # generate.py: the same flags, under their own heading
        parser = root.add_argument_group(heading)
    parser.add_argument("-d", "--datafile", "--data", dest="datafile", help="a text file to train on")
    parser.add_argument("-p", "--datapath", help="a folder: every text file under it is training data")
    parser.add_argument("-s", "--settings", default="default",
                        help="model/optimiser preset: tiny, default, speedrun, hyper")
    parser.add_argument("--arch", choices=tuple(ARCHS), default=None,
                        help="classic: the lecture's GPT (default); modern: rotary positions, RMSNorm, SwiGLU, "
                             "no biases (Llama's layout)")
    parser.add_argument("-i", "--iterations", default=None,
                        help="how long to train: quick, default, long, forever (until stopped)")
    parser.add_argument("-z", "--tokenizer", default=None,
                        help="characters (default), words, bpe, json (or jsontoken), tiktoken (o200k_base), gpt2, or "
                             "spaced_words (the original Repytilian's words: split at whitespace)")
    parser.add_argument("--encoding", default=None, metavar="NAME",
                        help="-z tiktoken: which tiktoken encoding (default o200k_base, as the original Repytilian)")
    parser.add_argument("--vocab-size", type=_positive_int, default=None,
                        help="vocabulary size for -z bpe (default 512)")
    parser.add_argument("--json-key", help="-z json: the key of a top-level object that holds the sequences")
    parser.add_argument("--json-val-key", help="-z json: the key whose sequences are the validation split")
    parser.add_argument("--json-layout", choices=("sequence", "sequences"), default=None,
                        help="-z json: read an array of arrays as one sequence of list tokens, or as many "
                             "sequences (default: many sequences, with a note)")
    group = root.add_argument_group("overrides (any preset field)")
    for cls, f in flag_fields():  # one flag per config field that has one, typed by the field
        group.add_argument(f.metadata["flag"], **_flag_argument(cls, f))
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
    parser.add_argument("-t", "--tokens", type=_nonnegative_int, default=300,
                        help="print a sample of this many tokens after training (0: none; default 300)")
    _add_data_and_settings(parser)
    _common(parser)


def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-m", "--model", default=DEFAULT_MODEL_DIR,
                        help=f'model folder (default {DEFAULT_MODEL_DIR}); "" trains a model first and saves nothing')
    parser.add_argument("-t", "--tokens", type=_nonnegative_int, default=500, help="tokens to generate (default 500)")
    parser.add_argument("--interactive", action="store_true",
                        help="talk to the model in a loop, as repytilian chat (-t: tokens per answer)")
    parser.add_argument("-c", "--continue", dest="prompt", default="", help="continue generation from this text")
    parser.add_argument("--prompt-file", metavar="FILE", default=None,
                        help="continue generation from the text of this file (UTF-8), for prompts too long to type")
    parser.add_argument("-f", "--filename", help="also write the generated text to this file (a folder, "
                                                 "ending in /: one file per sample)")
    parser.add_argument("-ft", "--filetokens", type=_nonnegative_int, default=None,
                        help="tokens to write into the file, if different from -t")
    sampling = parser.add_argument_group("sampling")
    sampling.add_argument("--temperature", type=float, default=None,
                          help="0 is greedy (always the likeliest token); higher is more varied "
                               f"(default {DEFAULT_TEMPERATURE})")
    sampling.add_argument("--top-k", type=int, default=None,
                          help=f"sample among the k likeliest tokens (default {DEFAULT_TOP_K}, or the whole "
                               "vocabulary if smaller; 0: off, every token)")
    sampling.add_argument("--top-p", type=float, default=1.0,
                          help="sample among the likeliest tokens whose probabilities add up to p (default 1: all)")
    sampling.add_argument("--num-samples", type=int, default=1, help="how many samples, generated as one batch")
    sampling.add_argument("--stop", action="append", default=[], metavar="STRING",
                          help="stop a sample where this text appears (repeatable; the text itself is not shown)")
    sampling.add_argument("--max-time", type=float, default=None, metavar="SECONDS",
                          help="stop after this many seconds")
    sampling.add_argument("--no-cache", action="store_true",
                          help="recompute the whole context for every token (slow; for comparison)")
    _last_flag(parser)
    _common(parser)
    _add_data_and_settings(parser, 'with -m "" (train a model first; as in training.py)')


def _train_options(args: argparse.Namespace, out: str | None, load: str | None):
    from ..api import TrainOptions
    from ..config import parse_set_options
    from ..data.corpus import DataSource

    overrides = parse_set_options(args.set)
    for _, f in flag_fields():
        if getattr(args, f.name) is not None:
            overrides[f.name] = getattr(args, f.name)
    data = None
    if args.datafile or args.datapath:
        data = dataclasses.replace(DataSource.from_args(args.datafile, args.datapath), json_key=args.json_key,
                                   json_val_key=args.json_val_key, json_layout=args.json_layout)
    elif args.json_key or args.json_val_key or args.json_layout:
        raise RepytilianError("--json-key, --json-val-key and --json-layout need JSON data: give -d FILE or -p DIR")
    return TrainOptions(
        data=data, tokenizer=args.tokenizer, tokenizer_options={"vocab_size": args.vocab_size, "encoding": args.encoding},
        settings=args.settings, arch=args.arch, iterations=args.iterations,
        overrides=overrides, out=out, load=load, device=args.device, seed=args.seed,
        progress=not args.no_progress and progress_wanted(),
        wandb=args.wandb, tensorboard=args.tensorboard, measure_dtype=args.measure_dtype,
    )


def speak(event) -> None:
    """Training's events in words on stderr (between the progress bar's frames), with what only the
    command line knows: the command that resumes a stopped run, and the one that samples a saved model."""
    from tqdm import tqdm

    from ..events import NothingSaved, Saved, Stopped

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


def train_command(args: argparse.Namespace) -> int:
    from ..api import train

    result = train(_train_options(args, out=args.model or None, load=args.load), on_event=speak)
    if args.tokens and not result.stopped_by and result.main:
        print("--- sample ---", file=sys.stderr)
        write_generation(result.language_model, "", args.tokens, {"seed": args.seed})
    return 0


def write_generation(lm, prompt: str, tokens: int, sampling: dict, filename: str | None = None,
                     file_tokens: int | None = None, num_samples: int = 1) -> None:
    """Write `tokens` new tokens to stdout and `file_tokens` to `filename` from one sampling run,
    so the shorter output is a prefix of the longer. One sample streams as it is sampled."""
    file_tokens = (tokens if file_tokens is None else file_tokens) if filename else 0
    if filename and (filename.endswith(("/", os.sep)) or Path(filename).is_dir()):
        _write_sample_files(lm, prompt, tokens, file_tokens, num_samples, sampling, Path(filename))
        return
    total = max(tokens, file_tokens)
    out_file = None
    if filename:
        try:
            out_file = open(filename, "w", encoding="utf-8")
        except OSError as e:
            raise RepytilianError(f"cannot write {filename}: {e.strerror}") from None
    written = 0
    try:
        if num_samples == 1:
            for piece in lm.render(prompt, total, **sampling):
                counted = piece.kind == "text"
                if tokens and (not counted or piece.tokens <= tokens):
                    sys.stdout.write(piece.text)
                    sys.stdout.flush()
                if out_file and (not counted or piece.tokens <= file_tokens):
                    out_file.write(piece.text)
                    written = max(written, min(piece.tokens, file_tokens))
            if tokens:
                sys.stdout.write("\n")
        else:
            screen, disk = _batch_samples(lm, prompt, tokens, file_tokens, num_samples, sampling)
            if tokens:
                sys.stdout.write(screen + "\n")
            if out_file:
                out_file.write(disk)
                written = file_tokens
    finally:
        if out_file:
            out_file.close()
    if filename:
        print(f"wrote {'up to ' if num_samples > 1 else ''}{written} tokens"
              f"{f' per sample ({num_samples} samples)' if num_samples > 1 else ''} to {filename}", file=sys.stderr)


def _batch_samples(lm, prompt: str, tokens: int, file_tokens: int, num_samples: int,
                   sampling: dict) -> tuple[str, str]:
    """Sample `num_samples` continuations as one batch; render each for the screen and the file."""
    stop = sampling.pop("stop", ())
    prompt_ids = lm.encode_prompt(prompt)
    produced = lm.sample_batch(prompt_ids, max(tokens, file_tokens), num_samples, **sampling)

    def render(limit: int) -> str:
        texts = [lm.render_ids(prompt, prompt_ids, ids[:limit], stop) for ids in produced]
        if lm.tokenizer.input_format == "json":  # one valid JSON document: an array of samples
            return "[\n" + ",\n".join(texts) + "\n]"
        return "\n\n---\n\n".join(texts)

    return render(tokens), render(file_tokens)


def _write_sample_files(lm, prompt: str, tokens: int, file_tokens: int, num_samples: int, sampling: dict,
                        folder: Path) -> None:
    """-f DIR/: each sample in a file of its own (sample_1.txt, ...; .json for JSON-token models)."""
    sampling = dict(sampling)
    stop = sampling.pop("stop", ())
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RepytilianError(f"cannot write into {folder}: {e.strerror or e}") from None
    prompt_ids = lm.encode_prompt(prompt)
    produced = lm.sample_batch(prompt_ids, max(tokens, file_tokens), num_samples, **sampling)
    if tokens:
        texts = [lm.render_ids(prompt, prompt_ids, ids[:tokens], stop) for ids in produced]
        sys.stdout.write("\n\n---\n\n".join(texts) + "\n")
    suffix = ".json" if lm.tokenizer.input_format == "json" else ".txt"
    width = len(str(num_samples))
    names = []
    for i, ids in enumerate(produced, start=1):
        path = folder / f"sample_{i:0{width}d}{suffix}"
        try:
            path.write_text(lm.render_ids(prompt, prompt_ids, ids[:file_tokens], stop), encoding="utf-8")
        except OSError as e:
            raise RepytilianError(f"cannot write {path}: {e.strerror or e}") from None
        names.append(path.name)
    print(f"wrote {num_samples} sample{'s' if num_samples > 1 else ''} of up to {file_tokens} tokens to {folder}/ "
          f"({names[0]}{' ... ' + names[-1] if len(names) > 1 else ''})", file=sys.stderr)


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


def _last_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--last", action="store_true",
                        help="the run's last model, even where it kept a better one in best/ (which is the default)")


def open_model(args: argparse.Namespace, verb: str = "sampling"):
    """The model a command samples: the run's best where it kept a better one, and says so."""
    from ..api import load_model

    lm = load_model(args.model, device=getattr(args, "device", "cpu"),
                    which="last" if getattr(args, "last", False) else "best")
    if lm.best:
        b = lm.best
        last = f"step {b['last_step']}, " if b.get("last_step") is not None else ""
        print(f"note: {verb} {Path(args.model) / 'best'}, the best model of this run (step {b['step']}, whole-split "
              f"val loss {b['val_loss_full']:.4f}; the last model, {last}{b['last_val_loss_full']:.4f}: --last)",
              file=sys.stderr)
    return lm


def info_command(args: argparse.Namespace) -> int:
    """The model card of a model folder (its README.md, or one made from its config.json)."""
    from ..store.card import model_card
    from ..store.folder import read_config

    folder = Path(args.model_dir)
    meta = read_config(folder)  # a clear error for anything that is not a model folder
    card = folder / "README.md"
    print(card.read_text(encoding="utf-8") if card.is_file() else model_card(meta), end="")
    return 0


def generate_command(args: argparse.Namespace) -> int:
    from ..api import train
    from ..sampling import SamplingOptions, check_lengths

    sampling = SamplingOptions(
        temperature=DEFAULT_TEMPERATURE if args.temperature is None else args.temperature,
        top_k=DEFAULT_TOP_K if args.top_k is None else args.top_k,
        top_p=args.top_p, seed=args.seed,
    )
    sampling.validate()  # before any training or loading, so a typo costs nothing
    check_lengths(max(args.tokens, args.filetokens or 0), args.num_samples)
    if args.max_time is not None and args.max_time <= 0:
        raise RepytilianError(f"--max-time must be more than 0 seconds, got {args.max_time}")
    if args.prompt_file is not None:
        args.prompt = _read_prompt_file(args.prompt_file, args.prompt)
    if not args.model:  # the seed's `generate.py -m ""`: train, show a sample, save nothing
        lm = train(_train_options(args, out=None, load=None), on_event=speak).language_model
    else:
        lm = open_model(args)
    if args.interactive:
        from ..serve.chat import END_OF_TURN
        from .chat import chat_loop

        return chat_loop(lm, args.tokens or 200, args.temperature, args.top_k, args.top_p, args.seed,
                         stop=args.stop[0] if args.stop else END_OF_TURN)
    options = {**dataclasses.asdict(sampling), "stop": args.stop, "max_time": args.max_time,
               "use_cache": not args.no_cache}
    write_generation(lm, args.prompt, args.tokens, options, args.filename, args.filetokens, args.num_samples)
    return 0


def chat_command(args: argparse.Namespace) -> int:
    from ..sampling import SamplingOptions
    from ..serve.chat import END_OF_TURN
    from .chat import chat_loop

    SamplingOptions(temperature=DEFAULT_TEMPERATURE if args.temperature is None else args.temperature,
                    top_k=args.top_k, top_p=args.top_p).validate()
    lm = open_model(args)
    return chat_loop(lm, args.tokens or 200, args.temperature, args.top_k, args.top_p, args.seed,
                     stop=args.stop or END_OF_TURN)


def bench_command(args: argparse.Namespace) -> int:
    from .bench import main as bench_main

    return bench_main(args.bench_args)


def eval_command(args: argparse.Namespace) -> int:
    from ..data.corpus import DataSource, TokenData, load_corpus
    from ..data.textfiles import TextFiles
    from ..evaluate import count_chars, evaluate

    lm = open_model(args, "evaluating")
    tokenizer = lm.tokenizer
    if args.datafile or args.datapath:
        source = DataSource.from_args(args.datafile, args.datapath)
        what = source.describe()
        corpus = load_corpus(source, tokenizer.input_format)
        if isinstance(corpus, TextFiles):
            ids, chars = TokenData.from_corpus(corpus, tokenizer, val_fraction=0).train, corpus.chars
        elif isinstance(corpus, str):
            ids, chars = tokenizer.encode_array(corpus), len(corpus)
        else:
            ids, chars = tokenizer.encode_sequences(corpus.train + (corpus.val or [])), None
    else:  # the model's own validation split
        source = DataSource.from_dict(lm.meta.get("data", {}).get("source", {"kind": "dataset", "value": "shakespeare"}))
        what = f"the validation split of {source.describe()}"
        data = TokenData.from_corpus(load_corpus(source, tokenizer.input_format), tokenizer)
        ids = data.val
        chars = count_chars(tokenizer, ids) if tokenizer.input_format == "text" else None
    r = evaluate(lm.model, ids, chars, stride=args.stride, progress=progress_wanted())
    bpc = "" if r.bits_per_char is None else f", {r.bits_per_char:.4f} bits per character"
    print(f"{what}: loss {r.loss:.4f} nats per token, perplexity {r.perplexity:.3f}{bpc} "
          f"({r.tokens:,} tokens scored{'' if r.chars is None else f', {r.chars:,} characters'}; "
          f"windows of {r.block_size} with stride {r.stride})")
    return 0


def plot_command(args: argparse.Namespace) -> int:
    from ..store.card import plot_loss, read_metrics
    from ..store.folder import read_config

    folder = Path(args.model_dir)
    read_config(folder)  # a clear error if it is not a model folder
    out = folder / "loss.png"
    if plot_loss(read_metrics(folder), out, title=str(folder)) is None:
        print("note: matplotlib is not installed: pip install 'repytilian[plot]'", file=sys.stderr)
        return 0
    print(f"wrote {out}", file=sys.stderr)
    return 0


def llama_cpp_command(gguf: Path, loaded, prompt: str = "ROMEO:") -> str:
    """A llama.cpp command line that continues `prompt` as far as the model's context allows:
    llama.cpp's default context is longer than these models', and its gpt2 architecture reads
    position embeddings past the end of the table (an assertion failure) beyond it."""
    block = loaded.model.config.block_size
    length = max(1, block - len(loaded.tokenizer.encode(prompt)))
    return f"llama-completion -m {gguf} -c {block} -n {length} -p '{prompt}'"


def save_converted(out: str, model, tokenizer, meta: dict, what: str) -> None:
    """Save a model converted from another format as a model folder, and say how to use it."""
    from ..api import LanguageModel
    from ..store.folder import save_model_dir
    from ..store.lock import TargetLock

    target = Path(out)
    try:
        sample = LanguageModel(model, tokenizer).generate("", 200, seed=0)
    except RepytilianError:
        sample = None
    with TargetLock(target):
        save_model_dir(target, model, tokenizer, meta, card=True, sample=sample)
    print(f"converted {what} into {target}: {model.num_params() / 1e6:.2f}M parameters, "
          f"{tokenizer.name} tokenizer ({tokenizer.vocab_size:,} tokens)\n"
          f"generate with: python3 generate.py -m {target}", file=sys.stderr)


def import_legacy_command(args: argparse.Namespace) -> int:
    from ..interop.legacy import convert

    model, tokenizer, meta = convert(args.legacy_dir)
    save_converted(args.out, model, tokenizer, {"imported_from": {"format": "repytilian-legacy",
                                                                  "path": str(args.legacy_dir), **meta}},
                   f"the original Repytilian model {args.legacy_dir}")
    return 0


def import_command(args: argparse.Namespace) -> int:
    if args.source_format == "hf":
        from ..interop.hf_import import import_hf

        if args.data:
            raise RepytilianError("--data is for nanoGPT checkpoints; a Hugging Face folder brings its own tokenizer")
        model, tokenizer, source = import_hf(args.checkpoint)
        save_converted(args.out, model, tokenizer, {"imported_from": source},
                       f"the Hugging Face model {args.checkpoint}")
        print(f"fine-tune it on your text with: python3 training.py -l {args.out} -d my_book.txt -m models/my_book",
              file=sys.stderr)
        return 0
    from ..interop.nanogpt import convert

    if not args.data:
        raise RepytilianError("--data is required with --from nanogpt: the text the model was trained on "
                              "(its characters are the vocabulary)")
    model, tokenizer, info = convert(args.checkpoint, args.data)
    meta = {"imported_from": {"format": "nanogpt", "path": str(args.checkpoint), **info},
            "data": {"source": {"kind": "file", "value": str(Path(args.data).resolve())}}}
    save_converted(args.out, model, tokenizer, meta, f"the nanoGPT checkpoint {args.checkpoint}")
    return 0


def export_command(args: argparse.Namespace) -> int:
    from ..interop.hf import export_hf, is_llama

    loaded = open_model(args, "exporting")
    if args.format == "onnx":
        from ..interop.onnx_export import export_onnx

        out = export_onnx(loaded.model, args.out)
        print(f"exported {args.model} to {out} ({out.stat().st_size / 1e6:.1f} MB): input_ids (batch, tokens up to "
              f"{loaded.model.config.block_size}) -> logits; its tokenizer is {loaded.path / 'tokenizer.json'}. "
              f"In Python:\n  import onnxruntime\n  session = onnxruntime.InferenceSession({str(out)!r})\n"
              "  logits = session.run(None, {'input_ids': ids})[0]", file=sys.stderr)
        return 0
    if args.format == "gguf":
        from ..interop.gguf_export import export_gguf

        out = export_gguf(loaded.model, loaded.tokenizer, args.out, name=Path(args.model).name)
        arch = "llama" if is_llama(loaded.model) else "gpt2"
        print(f"exported {args.model} to {out} ({arch} architecture, float32, {out.stat().st_size / 1e6:.1f} MB) for "
              f"llama.cpp and Ollama, e.g.:\n  {llama_cpp_command(out, loaded)}\n"
              f"(-c: llama.cpp must not open it with a context longer than the model's "
              f"{loaded.model.config.block_size} tokens; before llama.cpp b7348 the program was llama-cli)",
              file=sys.stderr)
        return 0
    out = export_hf(loaded.model, loaded.tokenizer, args.out)
    kind = "LlamaForCausalLM" if is_llama(loaded.model) else "GPT2LMHeadModel"
    print(f"exported {args.model} to {out} for Hugging Face transformers ({kind}). In Python:\n"
          f"  from transformers import AutoModelForCausalLM, AutoTokenizer\n"
          f"  model = AutoModelForCausalLM.from_pretrained({str(out)!r})\n"
          f"  tokenizer = AutoTokenizer.from_pretrained({str(out)!r})", file=sys.stderr)
    return 0


def tokenize_command(args: argparse.Namespace) -> int:
    from .tokenize import print_tokenizer_table

    print_tokenizer_table(args)
    return 0


def run(handler: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Call a command; user errors become one line on stderr and exit code 2."""
    try:
        return handler(args)
    except RepytilianError as e:
        if getattr(args, "debug", False):
            raise
        print(f"error: {in_flags(e)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:  # outside training (which saves on Ctrl+C): just stop
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `generate.py | head`: the reader left, which is fine
        sys.stderr.close()
        return 0


def training_script(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="training.py", description="Train a GPT language model on text")
    add_train_arguments(parser)
    return run(train_command, parser.parse_args(argv))


def generate_script(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="generate.py", description="Generate text from a trained model")
    add_generate_arguments(parser)
    return run(generate_command, parser.parse_args(argv))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="repytilian", description="Train GPT language models on your own text, "
                                     "and generate text from them")
    parser.add_argument("--version", action="version", version=f"repytilian {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    debug = _debug_flag(argparse.ArgumentParser(add_help=False))  # every verb has --debug
    p_train = sub.add_parser("train", help="train a model (the same flags as training.py)")
    add_train_arguments(p_train)
    p_train.set_defaults(handler=train_command)
    p_gen = sub.add_parser("generate", help="generate text from a model (the same flags as generate.py)")
    add_generate_arguments(p_gen)
    p_gen.set_defaults(handler=generate_command)
    p_tok = sub.add_parser("tokenize", parents=[debug], aliases=["data"],
                           help="compare tokenizers on a corpus: vocabulary, tokens, characters per token, speed")
    p_tok.add_argument("-d", "--datafile", "--data", dest="datafile", help="a text (or, with -z json, JSON) file")
    p_tok.add_argument("-p", "--datapath", help="a folder of text (or .json) files")
    p_tok.add_argument("-z", "--tokenizer", action="append", default=None,
                       help="tokenizer(s) to compare (repeatable; default: every text tokenizer)")
    p_tok.add_argument("--vocab-size", type=_positive_int, default=None, help="for bpe (default 512)")
    p_tok.add_argument("--json-key")
    p_tok.add_argument("--json-val-key")
    p_tok.add_argument("--json-layout", choices=("sequence", "sequences"), default=None)
    p_tok.set_defaults(handler=tokenize_command)
    p_eval = sub.add_parser("eval", parents=[debug],
                            help="loss, perplexity and bits per character of a model on text")
    p_eval.add_argument("-m", "--model", default=DEFAULT_MODEL_DIR, help=f"model folder (default {DEFAULT_MODEL_DIR})")
    p_eval.add_argument("-d", "--datafile", "--data", dest="datafile", help="a file to evaluate on")
    p_eval.add_argument("-p", "--datapath", help="a folder to evaluate on (default: the model's validation split)")
    p_eval.add_argument("--stride", type=_positive_int, default=None, help="window step (default: half the context)")
    p_eval.add_argument("--device", default="auto")
    _last_flag(p_eval)
    p_eval.set_defaults(handler=eval_command)
    p_info = sub.add_parser("info", parents=[debug], help="print a model folder's card: its shape, data, "
                            "training, loss and a sample")
    p_info.add_argument("model_dir", nargs="?", default=DEFAULT_MODEL_DIR,
                        help=f"model folder (default {DEFAULT_MODEL_DIR})")
    p_info.set_defaults(handler=info_command)
    p_plot = sub.add_parser("plot", parents=[debug],
                            help="draw loss.png (train/val loss and learning rate) in a model folder")
    p_plot.add_argument("model_dir")
    p_plot.set_defaults(handler=plot_command)
    p_legacy = sub.add_parser("import-legacy", parents=[debug],
                              help="convert a model folder of the original Repytilian (pickled .pt "
                              "files) into a model folder, reading it with torch.load(weights_only=True) only")
    p_legacy.add_argument("legacy_dir", help="the original's model folder, e.g. models/shakespeare/v2c")
    p_legacy.add_argument("out", help="the new model folder")
    p_legacy.set_defaults(handler=import_legacy_command)
    p_import = sub.add_parser("import", parents=[debug],
                              help="convert a Hugging Face GPT-2-family folder or a nanoGPT checkpoint into a model "
                                   "folder (to fine-tune or sample it)")
    p_import.add_argument("--from", dest="source_format", choices=("hf", "nanogpt"), required=True,
                          help="hf: a Hugging Face folder (config.json, model.safetensors, tokenizer.json), e.g. gpt2 "
                               "or distilgpt2 from your HF cache; nanogpt: nanoGPT's ckpt.pt")
    p_import.add_argument("checkpoint", help="the Hugging Face folder, or nanoGPT's ckpt.pt (read with "
                                             "torch.load(weights_only=True))")
    p_import.add_argument("out", help="the new model folder")
    p_import.add_argument("--data",
                          help="--from nanogpt: the text the model was trained on (its characters are the "
                               "vocabulary; nanoGPT's meta.pkl is never read)")
    p_import.set_defaults(handler=import_command)
    p_export = sub.add_parser("export", parents=[debug],
                              help="write a model in another format: hf (Hugging Face transformers), gguf (llama.cpp, "
                                   "Ollama) or onnx (onnxruntime)")
    p_export.add_argument("-m", "--model", default=DEFAULT_MODEL_DIR, help=f"model folder (default {DEFAULT_MODEL_DIR})")
    p_export.add_argument("--format", choices=("hf", "gguf", "onnx"), default="hf",
                          help="hf: a folder for transformers' AutoModelForCausalLM and AutoTokenizer; gguf: one "
                               "file for llama.cpp and Ollama (bpe tokenizers); onnx: one graph for onnxruntime")
    p_export.add_argument("out", help="the new folder (hf) or file (gguf, onnx)")
    _last_flag(p_export)
    p_export.set_defaults(handler=export_command)
    p_ladder = sub.add_parser("ladder", parents=[debug],
                              help="the lecture's steps from a bigram table to the GPT, each trained as long, "
                                   "compared in one table")
    add_ladder_arguments(p_ladder)
    p_ladder.set_defaults(handler=ladder_command)
    p_chat = sub.add_parser("chat", parents=[debug], help="talk to a model in a loop (/temp, /topk, /reset, /quit)")
    p_chat.add_argument("-m", "--model", default=DEFAULT_MODEL_DIR, help=f"model folder (default {DEFAULT_MODEL_DIR})")
    p_chat.add_argument("-t", "--tokens", type=_nonnegative_int, default=200, help="most tokens an answer may have")
    p_chat.add_argument("--temperature", type=float, default=None)
    p_chat.add_argument("--top-k", type=int, default=None, help="0: off")
    p_chat.add_argument("--top-p", type=float, default=1.0)
    p_chat.add_argument("--seed", type=int, default=None)
    p_chat.add_argument("--stop", default=None, metavar="TEXT",
                        help="where an answer ends (default: a blank line, the end of a speech)")
    p_chat.add_argument("--device", default="auto")
    _last_flag(p_chat)
    p_chat.set_defaults(handler=chat_command)
    p_serve = sub.add_parser("serve", parents=[debug],
                             help="a web playground and an OpenAI-compatible API for your models, on this machine")
    add_serve_arguments(p_serve)
    p_serve.set_defaults(handler=serve_command)
    p_bench = sub.add_parser("bench", add_help=False,
                             help="measure training speed and quality per time here (repytilian bench --help)")
    p_bench.add_argument("bench_args", nargs=argparse.REMAINDER)
    p_bench.set_defaults(handler=bench_command)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # its own parser takes every argument after the word
        return run(bench_command, argparse.Namespace(bench_args=argv[1:], debug="--debug" in argv))
    args = parser.parse_args(argv)
    return run(args.handler, args)

