"""Generation: the KV cache changes speed, not results; sampling controls; the Python API."""

import pytest
import torch
from conftest import TINY_OVERRIDES, make_corpus, run_script

from repytilian import load_model
from repytilian.api import TrainOptions, train
from repytilian.data import DataSource
from repytilian.decode import Decoder
from repytilian.errors import RepytilianError, SettingError
from repytilian.model import GPT, ModelConfig
from repytilian.sampling import SamplingOptions, sample_ids
from repytilian.stops import StopFilter


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gen")
    corpus = tmp / "corpus.txt"
    corpus.write_text(make_corpus())
    train(TrainOptions(data=DataSource("file", str(corpus)), iterations="quick", overrides=dict(TINY_OVERRIDES),
                       out=str(tmp / "model"), progress=False, seed=1))
    return tmp / "model"


def random_model(block_size=16) -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=11, block_size=block_size, n_layer=2, n_head=2, n_embd=16)).eval()


@pytest.mark.machine
@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.bfloat16, 0.1)])
def test_cached_decoding_gives_the_full_forward_logits(dtype, atol):
    model = random_model()
    idx = torch.randint(11, (2, 16))
    full, _ = model(idx)  # (2, 16, vocab)
    decoder = Decoder(model, batch_size=2, dtype=dtype)
    steps = [decoder.forward(idx[:, :5])]  # prefill: the logits of position 4
    steps += [decoder.forward(idx[:, t:t + 1]) for t in range(5, 16)]  # then one token at a time
    assert torch.allclose(torch.stack(steps, dim=1), full[:, 4:], atol=atol)
    with pytest.raises(ValueError, match="holds 16 positions"):
        decoder.forward(idx[:, :1])


@pytest.mark.machine
@pytest.mark.parametrize("prompt_len", [1, 5, 20])
def test_greedy_output_is_identical_with_and_without_the_cache(prompt_len):
    model = random_model(block_size=16)
    prompt = torch.randint(11, (prompt_len,)).tolist()
    greedy = SamplingOptions(temperature=0)
    n = 60  # several times the context: the window slides and the cache is refilled
    with_cache = [int(t) for t in sample_ids(model, prompt, n, greedy, use_cache=True)]
    without = [int(t) for t in sample_ids(model, prompt, n, greedy, use_cache=False)]
    assert with_cache == without and len(with_cache) == n


@pytest.mark.machine
def test_sampling_with_the_cache_matches_without_for_the_same_seed():
    model = random_model()
    opts = SamplingOptions(temperature=1.0, seed=3)
    a = [int(t) for t in sample_ids(model, [1, 2], 40, opts, use_cache=True)]
    b = [int(t) for t in sample_ids(model, [1, 2], 40, opts, use_cache=False)]
    assert a == b


def test_top_k_1_and_a_tiny_top_p_are_greedy():
    model = random_model()
    greedy = [int(t) for t in sample_ids(model, [3], 20, SamplingOptions(temperature=0))]
    top1 = [int(t) for t in sample_ids(model, [3], 20, SamplingOptions(temperature=1.5, top_k=1, seed=9))]
    nucleus = [int(t) for t in sample_ids(model, [3], 20, SamplingOptions(temperature=1.5, top_p=1e-6, seed=9))]
    assert greedy == top1 == nucleus


def test_a_batch_of_samples_differs_but_repeats_with_the_seed():
    model = random_model()
    opts = SamplingOptions(temperature=1.0, seed=5)
    batch = torch.stack(list(sample_ids(model, [1], 30, opts, num_samples=4)), dim=1)  # (4, 30)
    again = torch.stack(list(sample_ids(model, [1], 30, SamplingOptions(temperature=1.0, seed=5), num_samples=4)), 1)
    assert batch.shape == (4, 30) and torch.equal(batch, again)
    assert len({tuple(row.tolist()) for row in batch}) > 1


@pytest.mark.parametrize("opts, setting, message", [
    (dict(temperature=-0.1), "temperature", "--temperature must be 0"),
    (dict(top_p=0.0), "top_p", "--top-p must be in"),
    (dict(top_p=1.5), "top_p", "--top-p must be in"),
    (dict(top_k=-1), "top_k", "--top-k must be 0 (off: every token) or more"),
])
def test_bad_sampling_options(opts, setting, message):
    """The library names the setting (as a server's JSON would); the command line, its flag."""
    from repytilian.cli.flags import in_flags

    with pytest.raises(SettingError) as caught:
        next(sample_ids(random_model(), [1], 5, SamplingOptions(**opts)))
    assert caught.value.setting == setting and str(caught.value).startswith(f"{setting} ")
    assert in_flags(caught.value).startswith(message)


def test_stop_filter_never_shows_part_of_a_stop_string():
    f = StopFilter(["END", "\n\n"])
    out = [f.push(p) for p in ["abc E", "N", "x E", "ND more"]]
    assert out == ["abc ", "", "ENx ", ""] and f.stopped  # "EN" was held, then released when "x" came
    g = StopFilter(["\n\n"])
    assert g.push("line\n") == "line" and g.push("\nnext") == "" and g.stopped
    h = StopFilter([])
    assert h.push("anything") == "anything"


def test_python_api_generates_streams_and_repeats_with_a_seed(model_dir):
    lm = load_model(model_dir)
    text = lm.generate("the", 40, seed=11)
    assert isinstance(text, str) and len(text) == 40  # characters: one token, one character
    assert lm.generate("the", 40, seed=11) == text
    assert "".join(lm.stream("the", 40, seed=11)) == text
    assert lm.generate("the", 40, seed=11, use_cache=False) == text
    many = lm.samples("the", 20, num_samples=3, seed=2)
    assert len(many) == 3 and all(len(t) == 20 for t in many)
    assert lm.encode_prompt("") == lm.tokenizer.encode("\n")  # an empty prompt starts at a newline


def test_stop_strings_and_max_time_end_generation(model_dir):
    lm = load_model(model_dir)
    free = lm.generate("the", 200, seed=4)
    stop = free[20:22]
    cut = lm.generate("the", 200, seed=4, stop=[stop])
    assert cut == free[: free.index(stop)] and stop not in cut
    assert "".join(lm.stream("the", 200, seed=4, stop=[stop])) == cut
    # --max-time ends it: some text, far short of 100,000 tokens (which take minutes on any CPU)
    short = lm.generate("the", 100_000, seed=4, max_time=0.2)
    assert 0 < len(short) < 100_000


def test_generate_cli_sampling_flags(model_dir, tmp_path):
    r = run_script("generate.py", "-m", str(model_dir), "-t", "60", "-c", "the", "--seed", "7", "--temperature",
                   "0.5", "--top-k", "5", "--top-p", "0.9", cwd=tmp_path)
    again = run_script("generate.py", "-m", str(model_dir), "-t", "60", "-c", "the", "--seed", "7", "--temperature",
                       "0.5", "--top-k", "5", "--top-p", "0.9", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout == again.stdout and r.stdout.startswith("the")
    greedy = run_script("generate", "-m", str(model_dir), "-t", "30", "-c", "the", "--temperature", "0", cwd=tmp_path)
    no_cache = run_script("generate", "-m", str(model_dir), "-t", "30", "-c", "the", "--temperature", "0",
                          "--no-cache", cwd=tmp_path)
    assert greedy.stdout == no_cache.stdout


def test_generate_cli_stop_and_num_samples(model_dir, tmp_path):
    r = run_script("generate.py", "-m", str(model_dir), "-t", "300", "-c", "the", "--seed", "1", "--stop", " ",
                   cwd=tmp_path)
    assert r.returncode == 0 and " " not in r.stdout[len("the"):].rstrip("\n")
    many = run_script("generate.py", "-m", str(model_dir), "-t", "20", "-c", "the", "--num-samples", "3",
                      "--seed", "1", "-f", "all.txt", cwd=tmp_path)
    assert many.returncode == 0, many.stderr
    assert many.stdout.endswith("\n")
    text = many.stdout[:-1]  # a sample may itself end in a newline: strip only the one print adds
    samples = text.split("\n\n---\n\n")
    assert len(samples) == 3 and all(s.startswith("the") and len(s) == 23 for s in samples)
    assert (tmp_path / "all.txt").read_text() == text


@pytest.mark.parametrize("args, message", [
    (["--temperature", "-1"], "--temperature must be 0"),
    (["--top-p", "0"], "--top-p must be in (0, 1]"),
    (["--top-p", "2"], "--top-p must be in (0, 1]"),
    (["--top-k", "-1"], "--top-k must be 0 (off: every token) or more"),
    (["-t", "5000000000"], "between 0 and 1,000,000"),
    (["-t", "-3"], "must not be negative"),
    (["--num-samples", "0"], "--num-samples must be between 1"),
    (["--max-time", "0"], "--max-time must be more than 0"),
])
def test_bad_generation_input_is_a_clear_error(model_dir, tmp_path, args, message):
    r = run_script("generate.py", "-m", str(model_dir), *args, cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr and message in r.stderr, r.stderr


def test_nan_probabilities_are_a_clear_error():
    from repytilian.sampling import choose_next

    with pytest.raises(RepytilianError, match="invalid probabilities"):
        choose_next(torch.full((1, 5), float("nan")), SamplingOptions(), None)


def test_draws_follow_the_probabilities_and_never_pick_a_token_left_out():
    from repytilian.sampling import draw

    probs = torch.tensor([[0.5, 0.3, 0.2, 0.0]]).repeat(40_000, 1)
    ids = draw(probs, torch.Generator().manual_seed(0))[:, 0]
    shares = torch.bincount(ids, minlength=4) / len(ids)
    # a share's standard error is at most 0.0025 here: 0.01 is four of them (and the seed is fixed)
    assert torch.allclose(shares, torch.tensor([0.5, 0.3, 0.2, 0.0]), atol=0.01), shares
    assert shares[3] == 0


def test_a_zero_wait_on_a_token_left_out_is_not_an_error_and_not_drawn():
    from repytilian.sampling import first_arrival

    probs = torch.tensor([[0.0, 0.25, 0.75], [0.0, 0.25, 0.75]])
    noise = torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 1.0]])  # exponential_ gives 0 once in 2^24 values
    assert first_arrival(probs, noise).tolist() == [2, 1]


@pytest.mark.parametrize("call, error, message", [
    # each was a TypeError from deep inside, in Python's words ("'<=' not supported between instances of
    # 'int' and 'str'", "empty() takes 1 positional argument but 2 were given", ...)
    (lambda lm: lm.generate("the", "10"), SettingError, "max_new_tokens must be a whole number, got '10'"),
    (lambda lm: lm.generate("the", 10.0), SettingError, "max_new_tokens must be a whole number, got 10.0"),
    (lambda lm: lm.generate("the", 5, temperature="hot"), SettingError, "temperature must be a number, got 'hot'"),
    (lambda lm: lm.generate("the", 5, seed=1.5), SettingError, "seed must be a whole number, got 1.5"),
    (lambda lm: lm.generate("the", 5, top_k=True), SettingError, "top_k must be a whole number, got True"),
    (lambda lm: list(lm.stream(["the", "a"], 5)), SettingError, "prompt must be text, got list"),
    (lambda lm: lm.generate("the", 5, temprature=0.5), TypeError, "'temprature' \\(did you mean 'temperature'\\?\\)"),
    # other libraries' names (OpenAI's, transformers'): "unexpected keyword argument 'max_tokens'" alone
    (lambda lm: lm.generate("the", max_tokens=5), TypeError, "'max_tokens' \\(did you mean 'max_new_tokens'\\?\\)"),
    (lambda lm: lm.samples("the", 5, n=2), TypeError, "'n' \\(did you mean 'num_samples'\\?\\)"),
    (lambda lm: lm.generate("the", 5, do_sample=False), TypeError, "did you mean 'temperature'"),
    (lambda lm: lm.generate("the", 5, num_sample=2), TypeError, "did you mean 'num_samples'"),  # the request's own
    (lambda lm: lm.generate("the", 5, stop=5), SettingError, "stop must be text or a list of texts, got 5"),  # TypeError
    (lambda lm: lm.generate("the", 5, stop=["a", None]), SettingError, "stop must be text or a list of texts"),
    (lambda lm: lm.generate("the", 5, max_time=0), SettingError, "max_time must be more than 0"),  # said max_seconds
    (lambda lm: lm.generate(b"the", 5), SettingError, "prompt must be text, got bytes"),  # said "got int"
])
def test_python_callers_wrong_arguments_are_named(call, error, message):
    from conftest import tiny_language_model

    with pytest.raises(error, match=message):
        call(tiny_language_model())


def test_a_path_of_the_wrong_type_is_named():
    """Were "TypeError: expected str, bytes or os.PathLike object, not int" from deep inside."""
    import repytilian
    from repytilian.evaluate import evaluate_model

    with pytest.raises(SettingError, match="path must be a model folder's path"):
        repytilian.load_model(5)
    with pytest.raises(SettingError, match="data must be a path to a file or a folder"):
        repytilian.train(repytilian.TrainOptions(data=5, iterations="quick", out=None))
    from conftest import tiny_language_model
    with pytest.raises(SettingError, match=r"data must be a path to a file or a folder \(str or pathlib.Path\), got 5"):
        evaluate_model(tiny_language_model(), 5)


def test_a_stop_string_given_alone_is_one_stop_string():
    """`stop="\\n\\n"` (as OpenAI's API takes it) was read as the list of its characters: the text
    stopped at the first line break (for v2c and "ROMEO:", at once: an empty answer)."""
    from pathlib import Path

    import repytilian

    lm = repytilian.load_model(Path(__file__).resolve().parent.parent / "models" / "shakespeare" / "v2c")
    text = lm.generate("ROMEO:", 150, stop=["\n\n"], seed=1)
    assert "\n" in text.strip() and lm.generate("ROMEO:", 150, stop="\n\n", seed=1) == text
    chat = [{"role": "user", "content": "Good morrow"}]
    assert lm.chat(chat, 60, stop="xq", seed=2) == lm.chat(chat, 60, stop=["xq"], seed=2)


def test_numpy_numbers_and_no_prompt_are_taken():
    """A seed of np.int64 (numpy's random draws, a DataFrame's column) failed deep inside, "an integer is
    required"; a prompt of None iterated None."""
    import numpy as np
    from conftest import tiny_language_model

    lm = tiny_language_model()
    plain = lm.generate("the", 8, seed=3, top_k=5, temperature=0.5)
    assert lm.generate("the", np.int64(8), seed=np.int64(3), top_k=np.int32(5), temperature=np.float32(0.5)) == plain
    assert lm.generate(None, 4, seed=1) == lm.generate("", 4, seed=1)
