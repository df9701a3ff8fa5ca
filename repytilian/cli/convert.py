"""`repytilian import`, `import-legacy` and `export`: models in and out of other formats
(interop.convert's `import_model` and `export_model`), with what to do next in words."""
from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from ..config import DEFAULT_MODEL_DIR
from ..errors import RepytilianError
from ..interop.convert import EXPORT_FORMATS
from ..tokenizers.base import UnknownTokensError
from .common import last_flag, open_model, quote, say


def llama_cpp_command(gguf: Path, lm) -> str:
    """A llama.cpp command line that continues a prompt the model knows as far as its context allows:
    llama.cpp's default context is longer than these models', and its gpt2 architecture reads
    position embeddings past the end of the table (an assertion failure) beyond it."""
    prompt = example_prompt(lm.tokenizer)
    block = lm.model.config.block_size
    length = max(1, block - len(lm.tokenizer.encode(prompt)))
    return f"llama-completion -m {shlex.quote(str(gguf))} -c {block} -n {length} -p {shlex.quote(prompt)}"


def example_prompt(tokenizer) -> str:
    """ROMEO: where the vocabulary has it, else its first word or letter (a model of other text)."""
    try:
        tokenizer.encode("ROMEO:")
        return "ROMEO:"
    except UnknownTokensError:
        return next((t for t in tokenizer.itos if t.isalpha()), tokenizer.itos[0])


def _converted(lm, what: str) -> None:
    say(f"converted {what} into {lm.path}: {lm.model.num_params() / 1e6:.2f}M parameters, "
        f"{lm.tokenizer.name} tokenizer ({lm.tokenizer.vocab_size:,} tokens)\n"
        f"generate with: python3 generate.py -m {quote(lm.path)}")


def import_legacy_command(args: argparse.Namespace) -> int:
    from ..interop.convert import import_model

    lm = import_model("legacy", args.legacy_dir, args.out)
    _converted(lm, f"the original Repytilian model {args.legacy_dir}")
    return 0


def import_command(args: argparse.Namespace) -> int:
    from ..interop.convert import import_model

    # without --from, a file is nanoGPT's checkpoint (a Hugging Face model is a folder, or its Hub name)
    args.source_format = args.source_format or ("nanogpt" if Path(args.checkpoint).is_file() else "hf")
    lm = import_model(args.source_format, args.checkpoint, args.out, data=args.data)
    if args.source_format == "hf":
        _converted(lm, f"the Hugging Face model {args.checkpoint}")
        say(f"fine-tune it on your text with: python3 training.py -l {quote(args.out)} -d my_book.txt -m models/my_book")
    else:
        _converted(lm, f"the nanoGPT checkpoint {args.checkpoint}")
    return 0


# Names of single files people give export, and what to say of each beside "give a folder's name"
FILE_NAMES = {".safetensors": " (the model's weights are model.safetensors in its folder already)",
              ".bin": "", ".pt": " (Repytilian writes no pickles)", ".pth": " (Repytilian writes no pickles)",
              ".ckpt": "", ".json": "", ".zip": "", ".tar": "", ".gz": ""}


def export_target(args: argparse.Namespace) -> tuple[str, str]:
    """The format and the path to write: the path after the command or as -o; without --format, a
    .gguf or .onnx name says which (`export x.gguf` wrote a Hugging Face folder named x.gguf)."""
    if args.out and args.out_flag and args.out != args.out_flag:
        raise RepytilianError(f"two outputs given ({args.out} and -o {args.out_flag}): give one")
    out = args.out or args.out_flag
    if not out:
        raise RepytilianError("say where to write: repytilian export -m MODEL --format gguf model.gguf")
    if args.model == DEFAULT_MODEL_DIR and (Path(out) / "config.json").is_file():  # `export models/x`
        raise RepytilianError(f"{out} is a model; the word after export is where to write. Give the model as -m: "
                              f"repytilian export -m {quote(out)} {quote(Path(out).name + '.gguf')} (or a new "
                              "folder, for Hugging Face)")
    suffix = Path(out).suffix.lower()
    if args.format is None and suffix in FILE_NAMES:  # `export x.safetensors` wrote a Hugging Face folder so named
        folder = quote(Path(out).with_name(Path(out).stem + "-hf"))
        raise RepytilianError(f"{out} names a file, and --format hf writes a folder (config.json, model.safetensors, "
                              f"tokenizer.json): give a folder's name, such as {folder}, or a .gguf or .onnx name "
                              f"for one file{FILE_NAMES[suffix]}")
    return args.format or {".gguf": "gguf", ".onnx": "onnx"}.get(suffix, "hf"), out


def export_command(args: argparse.Namespace) -> int:
    from ..interop.convert import export_model
    from ..interop.hf import HF_CLASSES, family

    args.format, args.out = export_target(args)
    lm = open_model(args, "exporting")
    out = export_model(lm, args.format, args.out, name=Path(args.model).name)
    if args.format == "onnx":
        say(f"exported {args.model} to {out} ({out.stat().st_size / 1e6:.1f} MB): input_ids (batch, tokens up to "
            f"{lm.model.config.block_size}) -> logits; its tokenizer is {lm.path / 'tokenizer.json'}. "
            f"In Python:\n  import onnxruntime\n  session = onnxruntime.InferenceSession({str(out)!r})\n"
            "  logits = session.run(None, {'input_ids': ids})[0]")
    elif args.format == "gguf":
        size = out.stat().st_size / 1e6
        say(f"exported {args.model} to {out} ({family(lm.model)} architecture, float32, {size:.1f} MB) for "
            f"llama.cpp and Ollama, e.g.:\n  {llama_cpp_command(out, lm)}\n"
            f"(-c: llama.cpp must not open it with a context longer than the model's "
            f"{lm.model.config.block_size} tokens; before llama.cpp b7348 the program was llama-cli)")
    else:
        kind = HF_CLASSES[family(lm.model)]
        say(f"exported {args.model} to {out} for Hugging Face transformers ({kind}). In Python:\n"
            f"  from transformers import AutoModelForCausalLM, AutoTokenizer\n"
            f"  model = AutoModelForCausalLM.from_pretrained({str(out)!r})\n"
            f"  tokenizer = AutoTokenizer.from_pretrained({str(out)!r})")
    return 0


def register(sub, debug: argparse.ArgumentParser) -> None:
    legacy = sub.add_parser("import-legacy", parents=[debug],
                            help="convert a model folder of the original Repytilian (pickled .pt "
                            "files) into a model folder, reading it with torch.load(weights_only=True) only")
    legacy.add_argument("legacy_dir", help="the original's model folder, e.g. models/shakespeare/v2c")
    legacy.add_argument("out", help="the new model folder")
    legacy.set_defaults(handler=import_legacy_command)
    imp = sub.add_parser("import", parents=[debug],
                         help="convert a Hugging Face GPT-2-family folder or a nanoGPT checkpoint into a model "
                              "folder (to fine-tune or sample it)")
    imp.add_argument("--from", dest="source_format", choices=("hf", "nanogpt"), default=None,
                     help="hf: a Hugging Face folder (config.json, model.safetensors, tokenizer.json), or the name "
                          "of one in your HF cache (gpt2, distilgpt2); nanogpt: nanoGPT's ckpt.pt (default: "
                          "nanogpt for a file, else hf)")
    imp.add_argument("checkpoint", help="the Hugging Face folder or cached model's name, or nanoGPT's ckpt.pt (read "
                                        "with torch.load(weights_only=True))")
    imp.add_argument("out", help="the new model folder")
    imp.add_argument("--data", help="--from nanogpt: the text the model was trained on (its characters are the "
                                    "vocabulary; nanoGPT's meta.pkl is never read)")
    imp.set_defaults(handler=import_command)
    export = sub.add_parser("export", parents=[debug],
                            help="write a model in another format: hf (Hugging Face transformers), gguf (llama.cpp, "
                                 "Ollama) or onnx (onnxruntime)")
    export.add_argument("-m", "--model", default=DEFAULT_MODEL_DIR, help=f"model folder (default {DEFAULT_MODEL_DIR})")
    export.add_argument("--format", choices=EXPORT_FORMATS, default=None,
                        help="hf: a folder for transformers' AutoModelForCausalLM and AutoTokenizer; gguf: one "
                             "file for llama.cpp and Ollama (characters, words and bpe tokenizers); onnx: one "
                             "graph for onnxruntime (default: gguf or onnx for a name ending so, else hf)")
    export.add_argument("out", nargs="?", help="the new folder (hf) or file (gguf, onnx)")
    export.add_argument("-o", "--out", dest="out_flag", default=None, help="the same, as a flag")
    last_flag(export)
    export.set_defaults(handler=export_command)
