"""The generation engine (engine.py): one event per token, every way a sample ends, stop strings in
time linear in their length, and the same text from the command line, Python and the server."""
import pytest
import torch
from conftest import TINY_TEXT, run_script, tiny_language_model

from repytilian.engine import (
    CANCELLED,
    DEADLINE,
    END_TOKEN,
    LENGTH,
    STOP,
    Begun,
    Ended,
    Engine,
    Request,
    Token,
    shown_text,
)
from repytilian.errors import SettingError
from repytilian.language_model import LanguageModel
from repytilian.sampling import SamplingOptions
from repytilian.stops import StopFilter

TEXT = TINY_TEXT


@pytest.fixture(scope="module")
def lm() -> LanguageModel:
    return tiny_language_model(n_layer=1)


def run(lm, **fields) -> list:
    return list(lm.engine.run(Request(lm.encode_prompt("the "), **fields)))


def test_each_sample_begins_has_a_token_event_per_token_and_ends_with_its_length(lm):
    events = run(lm, max_new_tokens=7, num_samples=2, alternatives=3, sampling=SamplingOptions(seed=1))
    for sample in (0, 1):
        mine = [e for e in events if e.sample == sample]
        assert isinstance(mine[0], Begun) and isinstance(mine[-1], Ended)
        tokens = [e for e in mine if isinstance(e, Token)]
        assert [t.index for t in tokens] == list(range(1, 8))
        assert mine[-1].reason == LENGTH and mine[-1].tokens == 7
        for t in tokens:
            assert t.logprob <= 0 and len(t.top) == 3 and t.top[0].logprob >= t.top[-1].logprob
            assert t.logprob <= t.top[0].logprob + 1e-6 and t.label == lm.tokenizer.decode([t.id])


def test_greedy_tokens_are_the_likeliest_and_logprobs_come_only_when_asked(lm):
    events = run(lm, max_new_tokens=5, alternatives=1, sampling=SamplingOptions(temperature=0))
    assert all(t.id == t.top[0].id for t in events if isinstance(t, Token))
    plain = run(lm, max_new_tokens=5, sampling=SamplingOptions(temperature=0))
    assert [t.logprob for t in plain if isinstance(t, Token)] == [None] * 5
    assert [t.id for t in plain if isinstance(t, Token)] == [t.id for t in events if isinstance(t, Token)]


def test_a_stop_string_ends_a_sample_and_is_not_shown(lm):
    free = "".join(e.text for e in run(lm, max_new_tokens=12, sampling=SamplingOptions(temperature=0))
                   if isinstance(e, (Token, Ended)))
    cut = free[5:7]
    events = run(lm, max_new_tokens=12, stop=[cut], sampling=SamplingOptions(temperature=0))
    assert events[-1].reason == STOP
    assert "".join(e.text for e in events if isinstance(e, (Token, Ended))) == free[: free.index(cut)]


def test_the_end_token_deadline_and_cancellation_each_end_a_sample(lm):
    eos = lm.tokenizer.encode("t")[0]  # a character tokenizer has no end token: lend it one
    lm.tokenizer.eos_id = eos
    try:
        events = run(lm, max_new_tokens=40, prompt_text="x", sampling=SamplingOptions(seed=0, temperature=3.0))
    finally:
        del lm.tokenizer.eos_id
    ended = events[-1]
    assert ended.reason in (END_TOKEN, LENGTH)
    assert all(t.id != eos for t in events if isinstance(t, Token))
    assert run(lm, max_new_tokens=50, max_seconds=1e-9)[-1].reason == DEADLINE
    calls = []
    cancelled = run(lm, max_new_tokens=50, cancelled=lambda: len(calls.append(1) or calls) > 3)
    assert cancelled[-1].reason == CANCELLED and cancelled[-1].tokens == 3


def test_bad_requests_name_their_setting(lm):
    for fields, setting in [({"max_seconds": 0}, "max_seconds"), ({"alternatives": -1}, "alternatives"),
                            ({"sampling": SamplingOptions(top_p=0)}, "top_p")]:
        with pytest.raises(SettingError) as e:
            run(lm, **fields)
        assert e.value.setting == setting
    with pytest.raises(SettingError):
        list(lm.engine.run(Request([])))


def test_shown_text_replays_what_the_events_showed(lm):
    prompt = "the "
    request = Request(lm.encode_prompt(prompt), 20, SamplingOptions(seed=3), stop=["at"], prompt_text=prompt)
    events = list(Engine(lm.model, lm.tokenizer).run(request))
    ids = [e.id for e in events if isinstance(e, Token)]
    streamed = "".join(e.text for e in events if isinstance(e, (Begun, Token, Ended)))
    assert shown_text(lm.tokenizer, prompt, request.prompt_ids, ids, ["at"]) == streamed


def test_stop_strings_cut_the_same_however_the_text_arrives():
    text = "one two thrthree END fo"
    stops = ["three", "thr", "o t", "END"]
    whole = StopFilter(stops).cut(text)
    for size in (1, 2, 3, 5):
        f = StopFilter(stops)
        pieces = [f.push(text[i:i + size]) for i in range(0, len(text), size)]
        assert "".join(pieces) + f.flush() == whole == "one tw"
    assert StopFilter(["abcd", "bc"]).cut("xabcd") == "xa"  # "bc" is completed first
    assert StopFilter(["aab"]).cut("aaab!") == "a"  # a failed partial match falls back, not starts over


class CountingStr(str):
    """A stop string that counts how often its characters are looked at."""
    looks = 0

    def __getitem__(self, key):
        CountingStr.looks += 1
        return str.__getitem__(self, key)


def test_stop_strings_cost_time_linear_in_their_length():
    # Four long stop strings that the text keeps almost matching: the check that walked every prefix
    # of every stop string looked at characters with the square of their length at every token
    length = 2_000
    stops = [CountingStr("a" * (length - 1) + c) for c in "bcde"]
    CountingStr.looks = 0
    f = StopFilter(stops)
    shown = "".join(f.push("a") for _ in range(2 * length))
    assert shown == "a" * (length + 1)  # all but the last length - 1 characters: they may start a stop string
    assert CountingStr.looks < 20 * 4 * length  # a handful of looks a character and stop string


def test_sampling_defaults_are_the_same_from_the_command_line_python_and_the_server(tmp_path):
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from repytilian.api import load_model
    from repytilian.serve.app import create_app
    from repytilian.serve.registry import Registry

    folder = tmp_path / "models" / "tiny"
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT * 40)
    r = run_script("training.py", "-d", str(corpus), "-m", str(folder), "-i", "quick", "-t", "0", "--n-layer", "1",
                   "--n-embd", "16", "--n-head", "2", "--block-size", "16", "--batch-size", "4", "--iters", "5",
                   "--set", "eval_iters=1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    python = load_model(folder, device="cpu").generate("the ", 40, seed=7)
    cli = run_script("generate.py", "-m", str(folder), "-c", "the ", "-t", "40", "--seed", "7", cwd=tmp_path)
    assert cli.returncode == 0, cli.stderr
    with TestClient(create_app(Registry(root=tmp_path / "models")), base_url="http://127.0.0.1:8000") as client:
        answer = client.post("/v1/completions", json={"model": "tiny", "prompt": "the ", "max_tokens": 40, "seed": 7})
    assert answer.status_code == 200, answer.text
    assert cli.stdout == "the " + python + "\n"
    assert answer.json()["choices"][0]["text"] == python


def test_each_request_in_a_batch_gets_its_own_tokens_log_probabilities(lm):
    """Requests that ask for log-probabilities and requests that do not, decoding together: each
    token's figure is its own row's (gathered for all rows at once)."""
    ids = lm.encode_prompt("the ")
    greedy = SamplingOptions(temperature=0)
    requests = [Request(ids, 6, greedy, logprobs=True), Request(lm.encode_prompt("a cat"), 6, SamplingOptions(seed=3)),
                Request(lm.encode_prompt("a "), 6, greedy, alternatives=2), Request(ids, 6, greedy, alternatives=2)]
    tokens: dict[int, list[Token]] = {i: [] for i in range(len(requests))}
    for index, event in lm.engine.run_many(requests):
        if isinstance(event, Token):
            tokens[index].append(event)
    assert all(t.logprob is None for t in tokens[1])
    for index in (2, 3):  # greedy: the token is the likeliest, and its figure the first alternative's
        assert all(t.id == t.top[0].id and t.logprob == pytest.approx(t.top[0].logprob) for t in tokens[index])
    assert [t.logprob for t in tokens[0]] == pytest.approx([t.logprob for t in tokens[3]])  # the same prompt
    assert tokens[2][0].logprob != pytest.approx(tokens[3][0].logprob)  # another prompt, another figure
    # a sampled request's figures in a batch of others sampled otherwise are those it gets alone
    sampled = Request(lm.encode_prompt("a cat"), 6, SamplingOptions(temperature=0.9, seed=4), logprobs=True)
    alone = [(e.id, e.logprob) for e in lm.engine.run(sampled) if isinstance(e, Token)]
    together = [(e.id, e.logprob) for i, e in lm.engine.run_many(requests[:3] + [sampled])
                if isinstance(e, Token) and i == 3]
    assert [i for i, _ in together] == [i for i, _ in alone]
    assert [p for _, p in together] == pytest.approx([p for _, p in alone], abs=1e-5)


def test_the_engines_format_is_that_of_every_request_naming_none(lm):
    """Engine.dtype (serve --dtype) decodes requests that name no format; one that names it keeps its own."""
    sixteen = lm.generate("the ", 30, temperature=0.8, seed=4, dtype=torch.float16)
    try:
        lm.engine.dtype = torch.float16
        assert lm.generate("the ", 30, temperature=0.8, seed=4) == sixteen
        with lm.engine.batch() as batch:
            assert batch.decoder.dtype == torch.float16
        with lm.engine.batch(torch.float32) as batch:
            assert batch.decoder.dtype == torch.float32
    finally:
        lm.engine.dtype = None
    with lm.engine.batch() as batch:
        assert batch.decoder.dtype == torch.float32  # the machine's choice for a narrow model
