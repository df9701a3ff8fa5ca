"""Character and word models in llama.cpp: the GGUF file tokenizes as we do and continues as we do.

Runs where llama-cpp-python is installed (.ci/run installs it; it is not a dependency of the package).
"""
import os
from pathlib import Path

import pytest
from conftest import ROOT, run_script

from repytilian.interop.gguf_export import export_gguf
from repytilian.sampling import SamplingOptions, sample_ids
from repytilian.store.folder import load_model_dir
from repytilian.tokenizers.base import UnknownTokensError

pytest.importorskip("gguf")
llama_cpp = pytest.importorskip("llama_cpp")

SHIPPED = ROOT / "models" / "shakespeare"
# Tabs, runs of spaces, accents, a script without spaces, an emoji (four UTF-8 bytes), digits and _
VARIED = ("ROMEO:\tBut soft!  What light through yonder window breaks?\n\n"
          "Café, naïve señor; 日本語の本を読む 🙂 — «quoted» 123_456 x\n")


@pytest.fixture(scope="module")
def varied(tmp_path_factory):
    """A character and a word model in the Llama layout, trained a little on VARIED."""
    here = tmp_path_factory.mktemp("varied")
    (here / "v.txt").write_text(VARIED * 30, encoding="utf-8")
    for tokenizer, folder in (("characters", "characters"), ("words", "words-varied")):
        r = run_script("training.py", "-d", "v.txt", "-z", tokenizer, "--arch", "modern", "-m", folder,
                       "--iters", "40", "-t", "0", "--n-layer", "2", "--n-head", "2", "--n-embd", "32",
                       "--block-size", "32", "--batch-size", "8", "--set", "eval_iters=1", cwd=here)
        assert r.returncode == 0, r.stderr
    return here


def folder_of(name: str, varied: Path) -> Path:
    return SHIPPED / name if name in ("v2c", "v3c", "words") else varied / name


@pytest.fixture(scope="module")
def exported(varied, tmp_path_factory):
    """name -> (our model, llama.cpp's Llama on its GGUF), each exported once."""
    out, cache = tmp_path_factory.mktemp("gguf"), {}

    def get(name: str):
        if name not in cache:
            loaded = load_model_dir(folder_of(name, varied))
            path = export_gguf(loaded.model, loaded.tokenizer, out / f"{name}.gguf")
            block = loaded.model.config.block_size
            cache[name] = loaded, llama_cpp.Llama(model_path=str(path), n_ctx=block, verbose=False)
        return cache[name]
    return get


def shakespeare(chars: int) -> str:
    data = Path(os.environ.get("REPYTILIAN_DATA", ROOT.parent / "shared" / "data")) / "tinyshakespeare.txt"
    if not data.is_file():
        pytest.skip("Tiny Shakespeare is not on this machine (REPYTILIAN_DATA)")
    return data.read_text(encoding="utf-8")[:chars]


@pytest.mark.parametrize("name", ["v2c", "v3c", "words", "characters", "words-varied"])
def test_llama_cpp_tokenizes_known_text_as_we_do_and_decodes_it_back(name, exported, varied):
    loaded, llm = exported(name)
    texts = [VARIED, VARIED.replace("  ", "     "), "\n\n" + VARIED[: VARIED.index("yonder")]] if name in ("characters", "words-varied") \
        else [shakespeare(20_000), "  KING RICHARD III:\n\nNow is the winter  of our discontent\n"]
    for text in texts:
        ours = loaded.tokenizer.encode(text)
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == ours
        assert llm.detokenize(ours).decode() == text


def test_text_outside_the_vocabulary_is_refused_by_us_and_one_unknown_token_a_run_in_llama_cpp(exported):
    for name, known, unknown in (("v2c", "a b", "\t🙂é"),  # ASCII only: nothing from outside it
                                 ("characters", "Café", "è€"),  # è shares its first byte with é (UTF-8 0xC3)
                                 ("words", "the king", "🙂🙂")):
        loaded, llm = exported(name)
        before, after = known.split(" ", 1) if " " in known else (known[:2], known[2:])
        text = before + unknown + after
        with pytest.raises(UnknownTokensError):
            loaded.tokenizer.encode(text)
        unk = loaded.tokenizer.vocab_size  # the one row added after ours
        assert llm.n_vocab() == unk + 1 and llm.detokenize([unk], special=True) != b""
        expected = loaded.tokenizer.encode(before) + [unk] + loaded.tokenizer.encode(after)
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == expected
        assert llm.detokenize(expected).decode() == before + after  # the unknown token shows as nothing


def test_an_unknown_word_is_spelt_with_the_fewest_known_pieces_in_llama_cpp(exported):
    loaded, llm = exported("words")
    with pytest.raises(UnknownTokensError):
        loaded.tokenizer.encode("the kingqueen")  # not a word of Tiny Shakespeare; "king" and "queen" are
    pieces = llm.tokenize(b"kingqueen", add_bos=False, special=False)
    assert pieces == loaded.tokenizer.encode("king") + loaded.tokenizer.encode("queen")


@pytest.mark.parametrize("name", ["v2c", "v3c", "words", "characters", "words-varied"])
def test_llama_cpp_continues_greedily_token_for_token_as_we_do(name, exported):
    loaded, llm = exported(name)
    prompt = "ROMEO:" if name in ("v2c", "v3c", "words") else "Café, "
    ids = loaded.tokenizer.encode(prompt)
    n = loaded.model.config.block_size - len(ids)
    ours = [int(t) for t in sample_ids(loaded.model, ids, n, SamplingOptions(temperature=0))]
    llm.reset()
    out = llm.create_completion(prompt, max_tokens=n, temperature=0.0)
    answer = out["choices"][0]
    assert answer["finish_reason"] == "length"  # no end of text on the way (the <unk> row stands for it)
    assert answer["text"] == loaded.tokenizer.decode(ours) and out["usage"]["completion_tokens"] == n


def test_the_export_suggests_a_llama_cpp_command_with_a_prompt_the_model_knows(tmp_path):
    """Was: the command always began with ROMEO:, which a model of other text cannot encode, so the
    export of its (good) file ended in an error."""
    import shlex

    from conftest import tiny_language_model

    from repytilian.store.folder import save_model_dir

    lm = tiny_language_model()  # the letters of "the cat sat on the mat...": no R, no capitals
    save_model_dir(tmp_path / "cat", lm.model, lm.tokenizer, {})
    r = run_script("export", "-m", "cat", "--format", "gguf", "cat.gguf", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    line = next(x.strip() for x in r.stderr.splitlines() if x.strip().startswith("llama-completion "))
    words = shlex.split(line)
    prompt = words[words.index("-p") + 1]
    assert prompt == "a" and lm.tokenizer.encode(prompt)
    llm = llama_cpp.Llama(model_path=str(tmp_path / "cat.gguf"), n_ctx=16, verbose=False)
    assert llm.create_completion(prompt, max_tokens=4, temperature=0.0)["choices"][0]["finish_reason"] == "length"
