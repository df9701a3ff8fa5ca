"""The tokenizer part of a GGUF file: which of llama.cpp's tokenizers reads ours, and its vocabulary.

Byte-level BPE (ours, or a GPT-2 imported from Hugging Face) goes in as llama.cpp's "gpt2" tokenizer,
merges and all. Character and word vocabularies go in as its unigram tokenizer ("t5"): it finds the
segmentation of the text into vocabulary entries whose scores sum highest, and every entry here
scores -1, so it takes the fewest tokens. For characters there is only one segmentation; for words
(each run of letters and digits a token, each other character one) the fewest is the run whole, as
ours splits it. Both decode a token to its text, with "▁" read back as the space it stands for
(llama.cpp writes spaces so before looking them up).

A unigram tokenizer needs an id for what the vocabulary lacks, and ours has none (our tokenizers
refuse such text with a message naming it; llama.cpp cannot refuse). So one row is added, `<unk>`:
a run of characters outside the vocabulary becomes that one token, whose embedding is the mean of
the others (as for chat's new tokens). Its output row is the mean of the output rows, so its logit
is the mean of the logits: never the highest (greedy decoding never takes it) and at most 1/(V+1)
of the probability at temperature 1, far less for a trained model. It doubles as the end of text
for a plain model, so llama.cpp generates until its length limit, as we do.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..chat_format import TEMPLATE, ChatFormat
from ..errors import RepytilianError
from ..tokenizers import Tokenizer

NORMAL, UNKNOWN, CONTROL = 1, 2, 3  # llama.cpp's token types
SPACE = "\u2581"  # how llama.cpp's unigram tokenizer writes a space before looking it up
UNKNOWN_TOKEN = "<unk>"


@dataclass
class GGUFVocabulary:
    model: str  # llama.cpp's tokenizer: "gpt2" (byte-level BPE) or "t5" (unigram)
    tokens: list[str]
    types: list[int]
    end: int  # the id that ends generation (and that llama.cpp takes for the start of text)
    merges: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    unknown: int | None = None  # the added `<unk>` row's id, for the unigram tokenizer
    chat_template: str | None = None  # how llama.cpp (and Ollama, LM Studio) render a conversation

    @property
    def added_rows(self) -> int:
        """Rows the GGUF file has beyond the model's own (the unigram tokenizer's `<unk>`)."""
        return 1 if self.unknown is not None else 0


def gguf_vocabulary(tokenizer: Tokenizer) -> GGUFVocabulary:
    chat = ChatFormat.of(tokenizer)
    if tokenizer.name == "bpe" and getattr(tokenizer, "hf", None) is not None:
        tokens, merges, types = bpe_vocabulary(tokenizer)
        end = chat.end if chat is not None else end_of_text_id(tokens, types)  # a chat's answer ends its turn
        vocab = GGUFVocabulary("gpt2", tokens, types, end, merges=merges)
    elif tokenizer.name in ("characters", "words"):
        vocab = unigram_vocabulary(tokenizer, chat)
    else:
        raise RepytilianError(
            f"the {tokenizer.name} tokenizer has no form llama.cpp can load: GGUF export works for models with a "
            "characters, words or byte-level BPE tokenizer (`tokenizer` characters, words or bpe, or a GPT-2 "
            "imported from Hugging Face)", ("tokenizer",))
    vocab.chat_template = TEMPLATE if chat is not None else None
    return vocab


def unigram_vocabulary(tokenizer: Tokenizer, chat: ChatFormat | None) -> GGUFVocabulary:
    """A character or word vocabulary (and its special tokens) for llama.cpp's unigram tokenizer."""
    if SPACE in tokenizer.itos:
        raise RepytilianError(f"the vocabulary has the character {SPACE} (U+2581), which llama.cpp's tokenizer "
                              "takes for a space: this model cannot be written to GGUF")
    tokens = [SPACE if t == " " else t for t in tokenizer.itos]
    specials = sorted(tokenizer.specials.items(), key=lambda item: item[1])
    if [i for _, i in specials] != list(range(len(tokens), len(tokens) + len(specials))):
        raise RepytilianError("the special tokens do not follow the vocabulary: it cannot be written to GGUF")
    tokens += [name for name, _ in specials] + [UNKNOWN_TOKEN]
    types = [NORMAL] * len(tokenizer.itos) + [CONTROL] * len(specials) + [UNKNOWN]
    scores = [-1.0] * len(tokenizer.itos) + [0.0] * (len(specials) + 1)
    unknown = len(tokens) - 1
    return GGUFVocabulary("t5", tokens, types, chat.end if chat is not None else unknown,
                          scores=scores, unknown=unknown)


def bpe_vocabulary(tokenizer: Tokenizer) -> tuple[list[str], list[str], list[int]]:
    """(tokens by id, merges "a b", token types) of a byte-level BPE tokenizer, as llama.cpp wants them."""
    data = json.loads(tokenizer.hf.to_str())
    model = data.get("model", {})
    if model.get("type") != "BPE":
        raise RepytilianError("this tokenizer is not a BPE model, which llama.cpp's gpt2 tokenizer needs")
    vocab: dict[str, int] = model["vocab"]
    added = {t["id"]: t["content"] for t in data.get("added_tokens", [])}
    size = tokenizer.vocab_size
    tokens = [""] * size
    for token, i in vocab.items():
        if i < size:
            tokens[i] = token
    types = [NORMAL] * size
    for i, content in added.items():
        if i < size:
            tokens[i], types[i] = content, CONTROL
    missing = [i for i, t in enumerate(tokens) if not t]
    if missing:
        raise RepytilianError(f"the tokenizer has no text for ids {missing[:5]}: it cannot be written to GGUF")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return tokens, merges, types


# Text ends here: the names models imported from Hugging Face use for their end-of-text token.
END_TOKENS = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>")
# Bytes that UTF-8 never contains (0xFF, 0xFE ... 0xF5, 0xC1, 0xC0), as byte-level BPE writes them.
NEVER_IN_TEXT = tuple(chr(b) for b in range(0xFF, 0xF4, -1)) + ("\u00c1", "\u00c0")


def end_of_text_id(tokens: list[str], types: list[int]) -> int:
    """The id llama.cpp should take for the start and end of a BPE model's text.

    Without one, llama.cpp takes id 11 for both: a model trained here has no end token, and id 11
    is an ordinary piece of text (`,` in the shipped bpe model), so generation stopped at the first
    comma. A model with a real end-of-text token uses it. Otherwise the token of a byte that UTF-8
    never contains stands in: no training text has it, so the model has learnt never to predict it,
    and llama.cpp generates until its length limit, as we do.
    """
    for i, (token, kind) in enumerate(zip(tokens, types)):
        if kind == CONTROL and token in END_TOKENS:
            return i
    for byte in NEVER_IN_TEXT:
        if byte in tokens:
            return tokens.index(byte)
    raise RepytilianError("this byte-level vocabulary lacks the bytes that UTF-8 never uses: it cannot be "
                          "given an end-of-text token llama.cpp would not cut text at")
