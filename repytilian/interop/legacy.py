"""`repytilian import-legacy DIR OUT`: convert a model folder of the original Repytilian.

Those folders hold each part of the model as a pickled PyTorch module (token_embedding_table.pt,
position_embedding_table.pt, blocks.pt, ln_f.pt, lm_head.pt), the settings in stats.json, and
the vocabulary in tokens.json (or only in tokens.pickle), its kind in tokens.type.

A pickle can run any code when it is loaded, so the .pt files are read only by
`torch.load(weights_only=True)`, whose unpickler makes nothing but tensors and plain containers.
The module classes that the files name (torch.nn.Linear, the original's Block and Head...) are
mapped to `_Fields`, an inert record that receives the pickled attributes and runs nothing; any
other name in a file stops the import with a message. A vocabulary found only in tokens.pickle
(a plain Python pickle, which torch's unpickler cannot read) goes through `read_plain_pickle`,
which interprets the opcodes itself under the same rule. The original's architecture is the
lecture's: separate key/query/value matrices per head without biases, a ReLU MLP, and an output
head with a bias that is not tied to the token embedding; ModelConfig has switches for the last
two, and the per-head matrices are stacked into our fused c_attn.
"""
from __future__ import annotations

import io
import json
import pickletools
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from ..errors import RepytilianError
from ..model import GPT, ModelConfig
from ..tokenizers import CharacterTokenizer, SpacedWordTokenizer, Tokenizer
from .refusals import refusal

PARTS = ("token_embedding_table", "position_embedding_table", "blocks", "ln_f", "lm_head")

# Where the original's classes lived, and the torch modules its models are made of.
_MODULE_CLASSES = [
    "torch.nn.modules.sparse.Embedding",
    "torch.nn.modules.linear.Linear",
    "torch.nn.modules.normalization.LayerNorm",
    "torch.nn.modules.container.Sequential",
    "torch.nn.modules.container.ModuleList",
    "torch.nn.modules.activation.ReLU",
    "torch.nn.modules.dropout.Dropout",
    *(f"{module}.{name}" for module in ("src.llm_bigram", "llm_bigram", "__main__")
      for name in ("Block", "MultiHeadAttention", "Head", "FeedForward")),
]
_TOKENIZER_CLASSES = [
    f"{module}.{name}" for module in ("src.tokenizers.characters", "src.tokenizers.words",
                                      "src.tokenizers.tiktoken", "src.tokenizers.jsontoken", "src.tokenizer")
    for name in ("TokenizerCharacters", "TokenizerWords", "TokenizerTiktoken", "TokenizerJsontoken", "Tokenizer")
]


class _Fields:
    """Stands in for any allowed class in a legacy pickle: the unpickler sets its attributes."""

    def module(self, name: str) -> _Fields:
        return self.__dict__.get("_modules", {})[name]

    def children(self) -> list[_Fields]:
        return list(self.__dict__.get("_modules", {}).values())

    def tensor(self, name: str) -> torch.Tensor | None:
        value = self.__dict__.get("_parameters", {}).get(name)
        if value is None:
            value = self.__dict__.get("_buffers", {}).get(name)
        return None if value is None else value.detach()


def _safe_load(data: bytes, names: Iterable[str], what: str) -> Any:
    """torch.load(weights_only=True), with the given class names read as inert records."""
    with torch.serialization.safe_globals([(_Fields, name) for name in names]):
        try:
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as e:  # the unpickler raises several types; none of them ran the file's code
            why = refusal(e, "tensors, plain data and model classes of the original")
            raise RepytilianError(
                f"{what} cannot be read safely: {why}. Repytilian reads the original's model files without "
                "running any code in them, and this one needs more than that, so the folder cannot be "
                "converted; retrain the model with python3 training.py on the same text"
            ) from None


_NUMBERS_AND_TEXT = {
    "BININT", "BININT1", "BININT2", "LONG1", "LONG4", "INT", "LONG", "BINFLOAT", "FLOAT",
    "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINBYTES", "BINBYTES", "BINBYTES8",
}
_CONSTANTS = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False}


def read_plain_pickle(data: bytes, class_names: Iterable[str], what: str) -> Any:
    """The value in a pickle made of plain data (numbers, text, lists, dicts, tuples, sets) and
    objects of the named classes, which become inert `_Fields` records.

    This reads the opcodes and builds the values itself: it never calls a function or imports a
    name, so a pickle that asks for anything else is refused, never run. (torch's weights-only
    unpickler cannot read the protocol-4 pickles that Python writes by default.)
    """
    reader = _PlainReader(set(class_names), what)
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name == "STOP":
                return reader.stack.pop()
            reader.step(op.name, arg)
    except RepytilianError:
        raise
    except (ValueError, IndexError, KeyError, TypeError, AttributeError) as e:
        raise reader.refuse(f"it is damaged: {e}") from None
    raise reader.refuse("it ends without a value")


_EMPTY = {"EMPTY_LIST": list, "EMPTY_DICT": dict, "EMPTY_TUPLE": tuple, "EMPTY_SET": set}


class _PlainReader:
    """The pickle machine's stack, marks and memo, for the instructions that build plain data."""

    def __init__(self, allowed: set[str], what: str):
        self.allowed, self.what = allowed, what
        self.stack: list[Any] = []
        self.marks: list[int] = []
        self.memo: dict[int, Any] = {}

    def refuse(self, reason: str) -> RepytilianError:
        return RepytilianError(f"{self.what} cannot be read safely ({reason}); Repytilian never runs a pickle, "
                               "so this folder cannot be converted")

    def since_mark(self) -> list[Any]:
        start = self.marks.pop()
        items = self.stack[start:]
        del self.stack[start:]
        return items

    def step(self, name: str, arg: Any) -> None:
        stack = self.stack
        if name in ("PROTO", "FRAME"):
            return
        if name in _NUMBERS_AND_TEXT:
            stack.append(arg)
        elif name in _CONSTANTS:
            stack.append(_CONSTANTS[name])
        elif name == "MARK":
            self.marks.append(len(stack))
        elif name in ("MEMOIZE", "BINPUT", "LONG_BINPUT", "PUT"):
            self.memo[len(self.memo) if name == "MEMOIZE" else int(arg)] = stack[-1]
        elif name in ("BINGET", "LONG_BINGET", "GET"):
            stack.append(self.memo[int(arg)])
        elif not (self.container(name) or self.obj(name, arg)):
            # REDUCE, INST, OBJ, PERSID...: calls or lookups this reader never makes
            raise self.refuse(f"it uses the pickle instruction {name}")

    def container(self, name: str) -> bool:
        """A list, dict, tuple or set built or filled; False for any other instruction."""
        stack = self.stack
        if name in _EMPTY:
            stack.append(_EMPTY[name]())
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            items = tuple(stack[-n:])
            del stack[-n:]
            stack.append(items)
        elif name in ("TUPLE", "LIST", "FROZENSET"):
            stack.append({"TUPLE": tuple, "LIST": list, "FROZENSET": frozenset}[name](self.since_mark()))
        elif name == "DICT":
            items = self.since_mark()
            stack.append(dict(zip(items[::2], items[1::2])))
        elif name == "APPEND":
            value = stack.pop()
            stack[-1].append(value)
        elif name in ("APPENDS", "ADDITEMS"):
            items = self.since_mark()
            (stack[-1].extend if name == "APPENDS" else stack[-1].update)(items)
        elif name == "SETITEM":
            value, key = stack.pop(), stack.pop()
            stack[-1][key] = value
        elif name == "SETITEMS":
            items = self.since_mark()
            stack[-1].update(zip(items[::2], items[1::2]))
        else:
            return False
        return True

    def obj(self, name: str, arg: Any) -> bool:
        """An object of an allowed class, as an inert record; False for any other instruction."""
        stack = self.stack
        if name in ("STACK_GLOBAL", "GLOBAL"):
            if name == "STACK_GLOBAL":
                qualname, module = stack.pop(), stack.pop()
            else:
                module, qualname = arg.split(" ", 1)
            full = f"{module}.{qualname}"
            if full not in self.allowed:
                raise self.refuse(f"it names {full}")
            stack.append(_ClassName(full))
        elif name == "NEWOBJ":
            stack.pop()  # the constructor arguments, unused: the record is filled by BUILD
            if not isinstance(stack.pop(), _ClassName):
                raise self.refuse("it creates an object of no known class")
            stack.append(_Fields())
        elif name == "BUILD":
            state = stack.pop()
            if not isinstance(stack[-1], _Fields):
                raise self.refuse("it sets the state of something other than a plain object")
            if isinstance(state, tuple) and len(state) == 2:
                state = {**(state[0] or {}), **(state[1] or {})}
            if not isinstance(state, dict):
                raise self.refuse("an object's state is not a dictionary")
            stack[-1].__dict__.update(state)
        else:
            return False
        return True


class _ClassName(str):
    """A class a pickle named, which this reader only ever turns into a _Fields record."""


def _read_part(folder: Path, name: str) -> _Fields:
    path = folder / f"{name}.pt"
    if not path.is_file():
        raise RepytilianError(f"{folder} has no {path.name}: not a complete model folder of the original Repytilian")
    record = _safe_load(path.read_bytes(), _MODULE_CLASSES, str(path))
    if not isinstance(record, _Fields):
        raise RepytilianError(f"{path} does not hold a model part (found {type(record).__name__})")
    return record


def _legacy_tokens(folder: Path) -> tuple[str, list[str]]:
    """(kind, tokens) from tokens.type and tokens.json, or failing that tokens.pickle read safely."""
    kind_file = folder / "tokens.type"
    kind = kind_file.read_text(encoding="utf-8").strip() if kind_file.is_file() else None
    if (folder / "tokens.json").is_file():
        try:
            tokens = json.loads((folder / "tokens.json").read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise RepytilianError(f"{folder}/tokens.json is not valid JSON ({e})") from None
    elif (folder / "tokens.pickle").is_file():
        record = read_plain_pickle((folder / "tokens.pickle").read_bytes(), _TOKENIZER_CLASSES,
                                   f"{folder}/tokens.pickle")
        tokens = getattr(record, "tokens", None)
        kind = kind or getattr(record, "type", None)
    else:
        raise RepytilianError(f"{folder} has no tokens.json or tokens.pickle: the vocabulary is missing")
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise RepytilianError(f"{folder}: the vocabulary is not a list of strings")
    if kind is None and all(len(t) == 1 for t in tokens):
        kind = "characters"
    return kind or "unknown", tokens


def _tokenizer(kind: str, tokens: list[str], folder: Path) -> Tokenizer:
    if kind == "characters":
        return CharacterTokenizer(tokens)
    if kind == "words":  # split at whitespace, joined with spaces: SpacedWordTokenizer does the same
        return SpacedWordTokenizer(tokens)
    raise RepytilianError(
        f"{folder} uses the original's {kind!r} tokenizer, which has no counterpart here: only models of "
        "its characters and words tokenizers are converted. Retrain on the same text with python3 training.py"
    )


def _linear(record: _Fields, rows: int, cols: int, where: str, bias: bool | None = None) -> tuple:
    weight, b = record.tensor("weight"), record.tensor("bias")
    if weight is None or tuple(weight.shape) != (rows, cols):
        got = None if weight is None else tuple(weight.shape)
        raise RepytilianError(f"{where}: expected a {rows}x{cols} weight, found {got}")
    if bias is True and (b is None or tuple(b.shape) != (rows,)):
        raise RepytilianError(f"{where}: expected a bias of {rows}")
    return weight, b


def convert(folder: str | Path) -> tuple[GPT, Tokenizer, dict[str, Any]]:
    """The legacy folder as our model, tokenizer and a note of its settings."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RepytilianError(f"no such folder: {folder}")
    kind, tokens = _legacy_tokens(folder)
    tokenizer = _tokenizer(kind, tokens, folder)
    parts = {name: _read_part(folder, name) for name in PARTS}
    try:
        return _build(parts, tokenizer, kind, folder)
    except (KeyError, AttributeError, TypeError) as e:
        raise RepytilianError(
            f"{folder} is not laid out like a model of the original Repytilian (no {e} where expected)"
        ) from None


def _build(parts: dict[str, _Fields], tokenizer: Tokenizer, kind: str, folder: Path) -> tuple:
    wte = parts["token_embedding_table"].tensor("weight")
    wpe = parts["position_embedding_table"].tensor("weight")
    if wte is None or wpe is None or wte.dim() != 2 or wpe.dim() != 2 or wte.shape[1] != wpe.shape[1]:
        raise RepytilianError(f"{folder}: the embedding tables are not two matrices of the same width")
    vocab, C = wte.shape
    if vocab != tokenizer.vocab_size:
        raise RepytilianError(f"{folder}: the vocabulary has {tokenizer.vocab_size} tokens but the model {vocab}")
    blocks = parts["blocks"].children()
    if not blocks:
        raise RepytilianError(f"{folder}/blocks.pt holds no transformer blocks")
    heads = blocks[0].module("sa").module("heads").children()
    settings = {}
    if (folder / "stats.json").is_file():
        try:
            settings = json.loads((folder / "stats.json").read_text(encoding="utf-8"))
        except ValueError:
            settings = {}
    cfg = ModelConfig(vocab_size=vocab, block_size=wpe.shape[0], n_layer=len(blocks), n_head=len(heads), n_embd=C,
                      dropout=float(settings.get("n_dropout", 0.0)) if isinstance(settings, dict) else 0.0,
                      bias=True, activation="relu", tie_embeddings=False, head_bias=True)
    try:
        cfg.validate()
        model = GPT(cfg)
    except ValueError as e:
        raise RepytilianError(f"{folder}: the model's shapes do not make a GPT ({e})") from None
    state = _state_dict(parts, blocks, cfg, folder)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RepytilianError(f"{folder}: could not map {', '.join((missing + unexpected)[:3])}")
    return model.eval(), tokenizer, {"legacy_settings": settings, "legacy_tokenizer": kind}


def _state_dict(parts: dict[str, _Fields], blocks: list[_Fields], cfg: ModelConfig, folder: Path) -> dict:
    C, hs = cfg.n_embd, cfg.n_embd // cfg.n_head
    state = {
        "transformer.wte.weight": parts["token_embedding_table"].tensor("weight"),
        "transformer.wpe.weight": parts["position_embedding_table"].tensor("weight"),
        "transformer.ln_f.weight": parts["ln_f"].tensor("weight"),
        "transformer.ln_f.bias": parts["ln_f"].tensor("bias"),
    }
    head_w, head_b = _linear(parts["lm_head"], cfg.vocab_size, C, f"{folder}/lm_head.pt", bias=True)
    state["lm_head.weight"], state["lm_head.bias"] = head_w, head_b
    for i, block in enumerate(blocks):
        where, p = f"{folder}/blocks.pt block {i}", f"transformer.h.{i}."
        sa = block.module("sa")
        heads = sa.module("heads").children()
        if len(heads) != cfg.n_head:
            raise RepytilianError(f"{where}: {len(heads)} heads where the first block has {cfg.n_head}")
        # Our c_attn computes all queries, then all keys, then all values, each head's slice in turn.
        qkv = [torch.cat([_linear(h.module(name), hs, C, where)[0] for h in heads]) for name in ("query", "key", "value")]
        state[p + "attn.c_attn.weight"] = torch.cat(qkv)
        state[p + "attn.c_attn.bias"] = torch.zeros(3 * C)  # the original's heads have no biases
        state[p + "attn.c_proj.weight"], state[p + "attn.c_proj.bias"] = _linear(sa.module("proj"), C, C, where, True)
        net = block.module("ffwd").module("net").children()
        linears = [m for m in net if m.tensor("weight") is not None]
        if len(linears) != 2:
            raise RepytilianError(f"{where}: expected two linear layers in the feed-forward part")
        state[p + "mlp.c_fc.weight"], state[p + "mlp.c_fc.bias"] = _linear(linears[0], 4 * C, C, where, True)
        state[p + "mlp.c_proj.weight"], state[p + "mlp.c_proj.bias"] = _linear(linears[1], C, 4 * C, where, True)
        for ours, theirs in (("ln_1", "ln1"), ("ln_2", "ln2")):
            state[p + f"{ours}.weight"] = block.module(theirs).tensor("weight")
            state[p + f"{ours}.bias"] = block.module(theirs).tensor("bias")
    bad = [k for k, v in state.items() if v is None]
    if bad:
        raise RepytilianError(f"{folder}: no tensor for {', '.join(bad[:3])}")
    return {k: v.float() for k, v in state.items()}
