"""repytilian serve: every endpoint and error in-process (Starlette's test client), then the real
thing: the command line starting uvicorn on a free local port, the official `openai` client
against it, a client that goes away, a full queue."""
import contextlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import TINY, benchmark_module, checkout_path, run_script

pytest.importorskip("starlette")
from starlette.testclient import TestClient  # noqa: E402

from repytilian.serve.app import create_app  # noqa: E402
from repytilian.serve.limits import Limits  # noqa: E402
from repytilian.serve.registry import Registry  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "models" / "shakespeare" / "v1c"
TEXT = "shakespeare/v1c"
BETTER = "shakespeare/v3c"  # to compare with
MUSIC = "music/chords"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """A models folder: a shipped character model, a JSON-token model, and traps for path tricks."""
    root = tmp_path_factory.mktemp("served") / "models"
    shutil.copytree(SHIPPED, root / TEXT)
    shutil.copytree(SHIPPED.parent / "v3c", root / BETTER)
    rng = random.Random(0)
    chords = [[60, 64, 67], [62, 65, 69], [64, 67, 71], "rest"]
    doc = {"train": [[rng.choice(chords) for _ in range(30)] for _ in range(30)],
           "valid": [[rng.choice(chords) for _ in range(30)] for _ in range(4)]}
    (root.parent / "chords.json").write_text(json.dumps(doc))
    r = run_script("training.py", "-d", "chords.json", "-z", "json", "--json-key", "train", "--json-val-key", "valid",
                   "-m", f"models/{MUSIC}", "-i", "quick", "-t", "0", *TINY, cwd=root.parent)
    assert r.returncode == 0, r.stderr
    outside = root.parent / "secret"  # a model folder outside the models folder...
    shutil.copytree(SHIPPED, outside)
    (root / "escape").symlink_to(outside, target_is_directory=True)  # ...reachable only by a symlink
    (root / "not-a-model").mkdir()
    (root / "not-a-model" / "config.json").write_text("{}")
    return root


@pytest.fixture(scope="module")
def client(models):
    app = create_app(Registry(root=models), Limits(max_tokens=300, max_body_bytes=20_000, max_prompt_chars=2_000))
    with TestClient(app, base_url="http://localhost:8000") as c:
        yield c


def sse(text: str) -> list:
    out = []
    for block in text.split("\n\n"):
        if block.startswith("data: "):
            payload = block[len("data: "):]
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def assert_error(response, status: int, param=None, words: str = ""):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    assert words in error["message"]
    assert "Traceback" not in response.text


def test_models_lists_only_model_folders_inside_the_models_folder(client):
    ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert ids == [MUSIC, TEXT, BETTER]  # not the symlinked folder outside, not a folder without a real config
    playground = client.get("/api/models").json()["models"]
    text = next(m for m in playground if m["id"] == TEXT)
    assert text["tokenizer"] == "characters" and text["chat"] and text["val_loss"] > 0 and text["parameters"] > 0
    assert not next(m for m in playground if m["id"] == MUSIC)["chat"]


@pytest.mark.parametrize("name", ["../secret", "escape", "escape/", "/etc", "shakespeare/../../secret",
                                  "shakespeare", "not-a-model", str(SHIPPED), 7])
def test_no_request_opens_a_folder_outside_the_list(client, name):
    r = client.post("/v1/completions", json={"model": name, "prompt": "a", "max_tokens": 2})
    assert_error(r, 404, "model", "GET /v1/models lists them")
    assert client.get("/api/card", params={"model": str(name)}).status_code == 404


def test_a_completion_with_logprobs_and_a_seed(client):
    body = {"model": TEXT, "prompt": "ROMEO:", "max_tokens": 12, "temperature": 0.8, "seed": 5, "logprobs": 3}
    first, again = client.post("/v1/completions", json=body).json(), client.post("/v1/completions", json=body).json()
    assert first["object"] == "text_completion" and first["model"] == TEXT
    choice = first["choices"][0]
    assert choice["text"] == again["choices"][0]["text"] and len(choice["text"]) == 12  # one character a token
    assert choice["finish_reason"] == "length"
    assert first["usage"] == {"prompt_tokens": 6, "completion_tokens": 12, "total_tokens": 18}
    lp = choice["logprobs"]
    assert "".join(lp["tokens"]) == choice["text"] and len(lp["token_logprobs"]) == 12
    assert all(len(top) == 3 and all(v <= 0 for v in top.values()) for top in lp["top_logprobs"])
    assert lp["text_offset"] == list(range(12))
    other = client.post("/v1/completions", json={**body, "seed": 6}).json()["choices"][0]["text"]
    assert other != choice["text"]


def test_a_seeded_completion_is_the_text_python_gives_for_that_seed(client, models):
    """One engine under every surface: the server's text for a seed is the library's."""
    from repytilian import load_model

    body = {"model": TEXT, "prompt": "ROMEO:", "max_tokens": 40, "temperature": 0.9, "top_k": 20, "seed": 11}
    served = client.post("/v1/completions", json=body).json()["choices"][0]["text"]
    lm = load_model(models / TEXT)
    assert served == lm.generate("ROMEO:", 40, temperature=0.9, top_k=20, seed=11)


def test_streaming_gives_the_same_text_as_one_answer(client):
    body = {"model": TEXT, "prompt": "KING", "max_tokens": 20, "seed": 1, "n": 2}
    whole = client.post("/v1/completions", json=body).json()
    r = client.post("/v1/completions", json={**body, "stream": True, "stream_options": {"include_usage": True}})
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse(r.text)
    assert events[-1] == "[DONE]" and events[-2]["usage"]["completion_tokens"] == 40
    for i in range(2):
        streamed = "".join(c["text"] for e in events[:-2] for c in e["choices"] if c["index"] == i)
        assert streamed == whole["choices"][i]["text"]
    assert whole["choices"][0]["text"] != whole["choices"][1]["text"]
    assert [c["finish_reason"] for e in events[:-2] for c in e["choices"] if c["finish_reason"]] == ["length"] * 2


def test_stop_strings_and_token_id_prompts(client):
    free = client.post("/v1/completions", json={"model": TEXT, "prompt": "A", "max_tokens": 60, "seed": 3,
                                                "temperature": 0}).json()["choices"][0]["text"]
    cut = free.strip()[2:4]
    stopped = client.post("/v1/completions", json={"model": TEXT, "prompt": "A", "max_tokens": 60, "seed": 3,
                                                   "temperature": 0, "stop": [cut]}).json()["choices"][0]
    assert stopped["finish_reason"] == "stop" and stopped["text"] == free[: free.index(cut)]
    ids = client.post("/api/generate", json={"model": TEXT, "prompt": "A", "max_tokens": 1}).text
    prompt_ids = sse(ids)[0]["prompt_ids"]
    by_ids = client.post("/v1/completions", json={"model": TEXT, "prompt": prompt_ids, "max_tokens": 60,
                                                  "temperature": 0}).json()["choices"][0]["text"]
    assert by_ids == free


def test_chat_completions_use_the_script_template(client):
    body = {"model": TEXT, "messages": [{"role": "system", "content": "A play."},
                                        {"role": "user", "content": [{"type": "text", "text": "Good morrow!"}]}],
            "max_tokens": 40, "seed": 2, "logprobs": True, "top_logprobs": 2}
    answer = client.post("/v1/chat/completions", json=body).json()
    assert answer["object"] == "chat.completion"
    message = answer["choices"][0]["message"]
    assert message["role"] == "assistant" and "\n\n" not in message["content"]
    content = answer["choices"][0]["logprobs"]["content"]
    assert "".join(t["token"] for t in content).startswith(message["content"])
    assert all(len(t["top_logprobs"]) == 2 and t["bytes"] == list(t["token"].encode()) for t in content)
    events = sse(client.post("/v1/chat/completions", json={**body, "stream": True}).text)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1]) == message["content"]
    assert events[-1] == "[DONE]"


def test_fields_asking_for_nothing_are_taken_and_the_rest_refused(client):
    """Clients send penalties of 0 and the like by default: those are answered as if left out; a
    value the server would not act on is refused in words (it was ignored, the text unchanged)."""
    base = {"model": TEXT, "prompt": "A", "max_tokens": 12, "seed": 5}
    plain = client.post("/v1/completions", json=base).json()["choices"][0]["text"]
    neutral = {"presence_penalty": 0, "frequency_penalty": 0.0, "logit_bias": {}, "best_of": 1, "suffix": "",
               "echo": False}
    assert client.post("/v1/completions", json={**base, **neutral}).json()["choices"][0]["text"] == plain
    assert_error(client.post("/v1/completions", json={**base, "echo": 0}), 400, "echo", "or send false")
    chat = {"model": TEXT, "messages": [{"role": "user", "content": "Hail!"}], "max_tokens": 8}
    assert client.post("/v1/chat/completions", json={**chat, "presence_penalty": 0, "tools": []}).status_code == 200
    tool = {"type": "function", "function": {"name": "f", "parameters": {}}}
    assert_error(client.post("/v1/chat/completions", json={**chat, "tools": [tool]}), 400, "tools", "not supported")
    assert_error(client.post("/v1/chat/completions", json={**chat, "frequency_penalty": 2}), 400,
                 "frequency_penalty", "not supported")


def test_a_json_token_model_is_not_a_chat_model_but_completes_token_ids(client):
    r = client.post("/v1/chat/completions", json={"model": MUSIC, "messages": [{"role": "user", "content": "hi"}]})
    assert_error(r, 400, "model", "is not a chat model")
    assert r.json()["error"]["code"] == "model_not_chat"
    events = sse(client.post("/api/generate", json={"model": MUSIC, "prompt": "", "max_tokens": 5, "seed": 1}).text)
    assert events[0]["json"] is True
    tokens = [e for e in events if e["type"] == "token"]
    assert tokens and all(json.loads(t["label"]) in ([60, 64, 67], [62, 65, 69], [64, 67, 71], "rest")
                          or t["label"] == "(end)" for t in tokens)


def test_the_playground_stream_has_probabilities_and_ten_alternatives(client):
    events = sse(client.post("/api/generate", json={"model": TEXT, "prompt": "ROMEO:", "max_tokens": 8,
                                                    "temperature": 1.0, "top_k": 5, "seed": 4}).text)
    start, *tokens, end = events
    assert start["type"] == "start" and start["prompt_labels"] == list("ROMEO:")
    assert [t["type"] for t in tokens] == ["token"] * 8 and end["type"] == "end" and end["tokens"] == 8
    for t in tokens:
        probs = [a["prob"] for a in t["top"]]
        assert len(probs) == 10 and probs == sorted(probs, reverse=True) and sum(probs) <= 1.0001
        assert t["id"] in [a["id"] for a in t["top"][:5]]  # top-k 5 sampled among the five likeliest
        assert 0 < t["prob"] <= 1
    # Continuing from a chosen alternative: the prompt is the ids so far plus the choice
    chosen = tokens[0]["top"][3]
    again = sse(client.post("/api/generate", json={"model": TEXT, "prompt_ids": start["prompt_ids"] + [chosen["id"]],
                                                   "max_tokens": 3, "seed": 4}).text)
    assert again[0]["prompt_ids"][-1] == chosen["id"] and len([e for e in again if e["type"] == "token"]) == 3


@pytest.mark.parametrize("body, status, param, words", [
    ({"model": TEXT, "prompt": "a", "temperature": -1}, 400, "temperature", "from 0 to 2"),
    ({"model": TEXT, "prompt": "a", "temperature": "hot"}, 400, "temperature", "must be a number"),
    ({"model": TEXT, "prompt": "a", "max_tokens": 301}, 400, "max_tokens", "from 0 to 300"),
    ({"model": TEXT, "prompt": "a", "top_p": 0}, 400, "top_p", "more than 0"),
    ({"model": TEXT, "prompt": "a", "n": 0}, 400, "n", "from 1"),
    ({"model": TEXT, "prompt": "a", "seed": 1.5}, 400, "seed", "integer"),
    ({"model": TEXT, "prompt": "a", "stop": [1]}, 400, "stop", "at most 4 strings"),
    ({"model": TEXT, "prompt": "a", "logprobs": 11}, 400, "logprobs", "from 0 to 10"),
    ({"model": TEXT, "prompt": "a", "echo": True}, 400, "echo", "not supported"),
    # fields the server does not act on were ignored: a penalty or best_of gave plain samples, unsaid
    ({"model": TEXT, "prompt": "a", "presence_penalty": 1.5}, 400, "presence_penalty", "not supported"),
    ({"model": TEXT, "prompt": "a", "frequency_penalty": -1}, 400, "frequency_penalty", "leave it out (or send 0)"),
    ({"model": TEXT, "prompt": "a", "logit_bias": {"5": 100}}, 400, "logit_bias", "not supported"),
    ({"model": TEXT, "prompt": "a", "best_of": 3}, 400, "best_of", "not supported"),
    ({"model": TEXT, "prompt": "a", "suffix": " the end"}, 400, "suffix", "not supported"),
    ({"model": TEXT, "prompt": "☃ snow"}, 400, "prompt", "cannot continue from this prompt"),
    ({"model": TEXT, "prompt": "x" * 2001}, 400, "prompt", "the limit is 2,000"),
    ({"model": TEXT, "prompt": [1, 10**6]}, 400, "prompt", "token ids must be between 0 and"),
    ({"model": TEXT, "prompt": ["a", "b"]}, 400, "prompt", "one prompt per request"),
    ({"model": TEXT, "prompt": {"a": 1}}, 400, "prompt", "a string or a list of token ids"),
    ({"model": TEXT, "prompt": "a", "seed": 2**64}, 400, "seed", "a whole number from"),  # was a 500
    ({"model": TEXT, "prompt": "a", "seed": -2**63 - 1}, 400, "seed", "a whole number from"),
    ({"model": TEXT, "prompt": "a", "stream": True, "stream_options": 5}, 400, "stream_options", "an object"),
    ({"model": TEXT, "prompt": "a", "stream": True, "stream_options": "x"}, 400, "stream_options", "an object"),
    ({"model": TEXT, "prompt": "a", "stop": ["x" * 257]}, 400, "stop", "at most 256 characters"),
    ({"model": TEXT, "prompt": "a", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop", "at most 4 strings"),
])
def test_bad_requests_are_4xx_with_openai_errors(client, body, status, param, words):
    assert_error(client.post("/v1/completions", json=body), status, param, words)


def test_bad_bodies_methods_and_paths(client):
    assert_error(client.post("/v1/completions", content=b"{not json", headers={"content-type": "application/json"}),
                 400, None, "not valid JSON")
    assert_error(client.post("/v1/completions", json=[1, 2]), 400, None, "a JSON object")
    assert_error(client.post("/v1/completions", content=b"x" * 20_001, headers={"content-type": "application/json"}),
                 413, None, "the limit is 20,000")
    not_allowed = client.get("/v1/completions")
    assert_error(not_allowed, 405, None, "does not take that method")
    assert not_allowed.headers["allow"] == "POST"
    assert_error(client.get("/v1/nothing"), 404, None, "no such page")
    bad_chat = client.post("/v1/chat/completions", json={"model": TEXT, "messages": [{"role": "robot", "content": "x"}]})
    assert_error(bad_chat, 400, "messages[0].role", "must be one of")
    assert_error(client.post("/v1/chat/completions", json={"model": TEXT, "messages": []}), 400, "messages")
    assert client.get("/api/status").json()["active"] == 0  # the server is alive and idle after all that


def test_the_page_and_its_files_come_from_the_server(client):
    page = client.get("/")
    assert page.status_code == 200 and "Repytilian playground" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert not re.search(r"https?://", page.text)  # no CDN: it works offline
    for name in ("app.js", "style.css"):
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and not re.search(r"(src|href)=\"https?://|import .* from \"http", r.text)
    assert client.get("/static/../app.py").status_code == 404
    static = ROOT / "repytilian" / "serve" / "static"  # three files (and the icon): no build, no bundle
    assert sorted(p.name for p in static.iterdir()) == ["app.js", "favicon.svg", "index.html", "style.css"]
    assert re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text) == [
        "/static/favicon.svg", "/static/style.css", "/static/app.js"]


def test_the_card_view_shows_the_loss_curve_live_while_a_run_trains(models, client, tmp_path):
    from conftest import TINY_OVERRIDES

    from repytilian.api import TrainOptions, train
    from repytilian.data import DataSource
    from repytilian.events import Evaluated

    card = client.get("/api/card", params={"model": TEXT}).json()
    assert card["training"] is False and card["metrics"] and "v1c" in card["card"]
    corpus = tmp_path / "c.txt"
    corpus.write_text("the king walks to the castle. " * 200)
    seen = []

    def watch(event):
        if isinstance(event, Evaluated):  # the server sees each evaluation as soon as it is made
            live = client.get("/api/card", params={"model": "fresh/run"}).json()
            seen.append((live["training"], [m["step"] for m in live["metrics"]]))

    target = models / "fresh" / "run"
    train(TrainOptions(data=DataSource("file", str(corpus)), overrides={**TINY_OVERRIDES, "max_iters": 30},
                       out=str(target), progress=False), on_event=watch)
    assert seen == [(True, [10]), (True, [10, 20]), (True, [10, 20, 30])]
    after = client.get("/api/card", params={"model": "fresh/run"}).json()
    assert after["training"] is False and [m["step"] for m in after["metrics"]] == [10, 20, 30]
    shutil.rmtree(target.parent)


# --- the real server --------------------------------------------------------------------------


class RealServer:
    def __init__(self, models: Path, *flags: str):
        env = {**os.environ, "PYTHONPATH": checkout_path(), "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "repytilian", "serve", "--models", str(models),
                                      "--port", "0", *flags], stderr=subprocess.PIPE, text=True, env=env)
        self.lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.lines.append(line)
            found = re.search(r"serving on (http://127\.0\.0\.1:\d+)/", line)
            if found:
                self.url = found.group(1)
                threading.Thread(target=self._drain, daemon=True).start()
                return
        self.stop()
        pytest.fail("the server did not start:\n" + "".join(self.lines))

    def _drain(self):
        for line in self.proc.stderr:
            self.lines.append(line)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="module")
def server(models):
    s = RealServer(models, "--max-concurrent", "1", "--max-queue", "1", "--max-tokens", "100000")
    yield s
    s.stop()


def test_the_server_says_at_start_how_its_models_decode_faster(server, models):
    hint = "--compile builds them as each model loads"
    assert any(hint in line for line in server.lines)
    compiling = RealServer(models, "--compile")  # it builds as models load: nothing to tell
    compiling.stop()
    assert not any(hint in line for line in compiling.lines) and any("serving on" in line for line in compiling.lines)


@pytest.mark.slow
def test_the_openai_client_works_unchanged(server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="not-needed")
    assert [m.id for m in client.models.list()] == [MUSIC, TEXT, BETTER]
    done = client.completions.create(model=TEXT, prompt="ROMEO:", max_tokens=10, seed=1, logprobs=2)
    assert len(done.choices[0].text) == 10 and done.usage.completion_tokens == 10
    assert len(done.choices[0].logprobs.top_logprobs[0]) == 2
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=TEXT, prompt="ROMEO:", max_tokens=10, seed=1, stream=True) if c.choices)
    assert streamed == done.choices[0].text
    chat = client.chat.completions.create(model=TEXT, messages=[{"role": "user", "content": "Speak!"}],
                                          max_tokens=30, seed=3)
    pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model=TEXT, messages=[{"role": "user", "content": "Speak!"}], max_tokens=30, seed=3, stream=True)
        if c.choices]
    assert "".join(pieces) == chat.choices[0].message.content
    with pytest.raises(openai.NotFoundError, match="no model"):
        client.completions.create(model="../secret", prompt="a", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="not a chat model"):
        client.chat.completions.create(model=MUSIC, messages=[{"role": "user", "content": "hi"}])


@pytest.mark.slow
def test_a_client_that_goes_away_stops_its_generation_and_a_full_queue_answers_429(server):
    import httpx

    long = {"model": TEXT, "prompt": "ROMEO:", "max_tokens": 100000, "stream": True}
    clients = [httpx.Client(base_url=server.url, timeout=60) for _ in range(4)]  # one connection each
    first, second, third, watcher = clients
    try:
        with first.stream("POST", "/v1/completions", json=long) as streaming:
            lines = streaming.iter_lines()  # kept: dropping it would close the stream
            next(lines)  # generating: the one turn is taken
            queued = threading.Thread(target=lambda: second.post("/v1/completions", json={**long, "stream": False,
                                                                                           "max_tokens": 5}))
            queued.start()
            deadline = time.monotonic() + 10
            while watcher.get("/api/status").json()["waiting"] < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            refused = third.post("/v1/completions", json=long)  # one running, one waiting: full
            assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"
            assert refused.headers["retry-after"] == "1"
        first.close()
        # The first client has gone: its 100,000 tokens stop being made, the queued one runs and ends
        queued.join(30)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            status = watcher.get("/api/status").json()
            if status["active"] == 0 and status["waiting"] == 0:
                break
            time.sleep(0.1)
        assert status["active"] == 0 and status["generated_tokens"] < 50000
        assert third.post("/v1/completions", json={"model": TEXT, "prompt": "A", "max_tokens": 3}).status_code == 200
    finally:
        for c in clients:
            c.close()
    assert server.proc.poll() is None and not any("Traceback" in line for line in server.lines)


def test_serving_beyond_this_machine_warns(models):
    from repytilian.cli.serve import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")
    r = run_script("serve", "--models", str(models / "nowhere"), cwd=models)
    assert r.returncode == 2 and "is not a folder" in r.stderr


def test_serve_dtype_sets_the_format_of_every_model_it_loads(models, monkeypatch):
    import torch

    from repytilian.runtime import precision

    registry = Registry(root=models, dtype=torch.float16)
    lm = registry.load(registry.find(TEXT))
    assert lm.engine.dtype == torch.float16
    with lm.engine.batch() as batch:  # as a server's batch loop takes its decoder: no format named
        assert batch.decoder.dtype == torch.float16
    assert Registry(root=models).load(registry.find(TEXT)).engine.dtype is None  # auto: the machine's choice
    # bf16 where the CPU would emulate it: refused at start, with the reason
    monkeypatch.setattr(precision, "cpu_bf16", lambda: precision.Bf16Support(False, "no avx512_bf16"))
    r = run_script("serve", "--models", str(models), "--dtype", "bfloat16", cwd=models)
    assert r.returncode == 2 and "no native bf16 (no avx512_bf16)" in r.stderr and "--dtype auto" in r.stderr


# --- the playground in a real browser ---------------------------------------------------------

ARTIFACTS = ROOT / "tests" / "artifacts"  # the screenshot lands here (ignored by git)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_or_skip() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    missing = None if path else "Debian's chromium is not installed (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing = missing or "playwright is not installed (pip install playwright)"
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI needs the browser test: {missing}")
        pytest.skip(missing)
    return path


@contextlib.contextmanager
def browser_page():
    """A page in Debian's headless Chromium, 900 x 900. The page forbids eval (its CSP); the tests'
    own probes need it, the page's code does not."""
    chromium = chromium_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        try:
            yield browser.new_page(viewport={"width": 900, "height": 900}, bypass_csp=True)
        finally:
            browser.close()


@pytest.mark.slow
def test_the_playground_in_a_real_browser(server):
    from playwright.sync_api import expect

    with browser_page() as page:
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server.url + "/")
        page.select_option("#model", TEXT)
        expect(page.locator("#model-info")).to_contain_text("tokenizer characters")
        page.fill("#prompt", "ROMEO:")
        page.fill("#max_tokens", "1500")
        page.fill("#seed", "7")
        page.click("#generate")
        # Tokens arrive while it is still generating: some are there before the end
        page.wait_for_function("document.querySelectorAll('#output .tok').length >= 5")
        assert page.locator("#stop").is_enabled()
        arrived = page.locator("#output .tok").count()
        expect(page.locator("#stats")).to_contain_text("tokens/s", timeout=60_000)
        total = page.locator("#output .tok").count()
        assert 5 <= arrived < total == 1500
        # Hover a token: its ten likeliest alternatives, with probabilities
        token = page.locator("#output .tok").nth(4)
        token.hover()
        box = page.locator("#alternatives")
        expect(box).to_be_visible()
        choices = box.locator("button")
        expect(choices).to_have_count(10)
        assert "%" in choices.nth(0).inner_text()
        # Pick one that was not sampled: the text continues from it
        token.click()
        pick = box.locator("button:not(.chosen)").first
        label = json.loads(pick.locator("span").first.inner_text())
        pick.click()
        expect(page.locator("#stats")).to_contain_text("tokens/s", timeout=60_000)
        picked = page.locator("#output .tok").nth(4)
        assert "picked" in picked.get_attribute("class")
        assert picked.inner_text() == label.replace("\n", "\u21b5")
        assert page.locator("#output .tok").count() > 5
        ARTIFACTS.mkdir(exist_ok=True)
        page.locator("#output .tok").nth(12).hover()
        page.screenshot(path=str(ARTIFACTS / "playground.png"))
        # Stop: a long generation ends when asked
        page.fill("#max_tokens", "4000")
        page.click("#generate")
        page.wait_for_function("document.querySelectorAll('#output .tok').length >= 3")
        page.click("#stop")
        expect(page.locator("#stats")).to_contain_text("stopped after", timeout=10_000)
        # The keyboard reaches the tokens; Escape closes the alternatives
        page.locator("#output .tok").nth(1).focus()
        expect(box).to_be_visible()
        page.keyboard.press("Escape")
        expect(box).to_be_hidden()
        # The card view: the loss curve and the card
        page.click("#tab-card")
        expect(page.locator("#card")).to_contain_text("v1c")
        expect(page.locator("#card-status")).to_contain_text("evaluations")
        # A phone's width: nothing wider than the screen
        page.set_viewport_size({"width": 375, "height": 800})
        page.click("#tab-generate")
        assert page.evaluate("document.documentElement.scrollWidth") <= 376
        assert not errors, errors


@pytest.mark.slow
def test_the_load_benchmark_runs_bounded_and_clean(models):
    bench = benchmark_module("serve_load")
    # A queue as long as there are clients, as the benchmark runs it: a client's next request may
    # arrive while the worker of its last one is still finishing, so a shorter queue could say 429
    proc, url = bench.start_server(models, clients=3, concurrent=1)
    try:
        result = bench.run(url, TEXT, clients=3, requests=3, tokens=8, stream=True, server_pid=proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)
    assert result["requests"] == 9 and result["errors"] == 0, result["first_error"]
    assert result["p99_ms"] >= result["p50_ms"] > 0 and result["tokens_per_s"] > 0
    # where the CPU went: the server's (Linux's /proc) and the clients' own, which share the cores
    assert result["server_ms_per_request"] > 0 and result["client_ms_per_request"] > 0
    assert 0 < result["server_cores"] <= os.cpu_count() + 0.5 and result["client_cores"] > 0


def test_one_model_folder_can_be_served_alone(models):
    with TestClient(create_app(Registry(single=models / TEXT)), base_url="http://localhost:8000") as c:
        assert [m["id"] for m in c.get("/v1/models").json()["data"]] == ["v1c"]
        done = c.post("/v1/completions", json={"prompt": "A", "max_tokens": 2})  # no model named: the one
        assert done.status_code == 200 and done.json()["model"] == "v1c"
        assert_error(c.post("/v1/completions", json={"model": MUSIC, "prompt": "a"}), 404, "model")
    from repytilian.errors import RepytilianError

    with pytest.raises(RepytilianError, match="is not a model folder"):
        Registry(single=models / "not-a-model")
    # serve --models models/x/v1c served nothing ("models: none yet"): that one model is served
    assert [m.id for m in Registry(root=models / TEXT).scan()] == ["v1c"]
    # serve -m models/x was "not a model folder": it holds models, served with --models
    with pytest.raises(RepytilianError, match="shakespeare is a folder of models, not a model: serve them all with "
                                              "`models`") as refused:
        Registry(single=models / "shakespeare")
    assert refused.value.settings == ("models",)


CONTRAST = """
() => {
  const lum = (rgb) => rgb.map((v) => v / 255).map((c) => c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4)
    .reduce((sum, c, i) => sum + c * [0.2126, 0.7152, 0.0722][i], 0);
  const parse = (css) => css.match(/[\\d.]+/g).map(Number);
  let worst = 99;
  for (const tok of document.querySelectorAll("#output .tok")) {
    const style = getComputedStyle(tok);
    const [r, g, b, a = 1] = parse(style.backgroundColor);
    const back = [r, g, b].map((v) => v * a + 255 * (1 - a));  // on the white page
    const ink = parse(style.color).slice(0, 3);
    const [hi, lo] = [lum(back), lum(ink)].sort((x, y) => y - x);
    worst = Math.min(worst, (hi + 0.05) / (lo + 0.05));
  }
  return worst;
}
"""

CURVE_PIXELS = """
() => {
  const c = document.getElementById("plot");
  const data = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  const colours = [[36, 87, 197], [217, 72, 15]];
  let top = c.height, bottom = -1;
  for (let y = 0; y < c.height; y++) for (let x = 0; x < c.width; x++) {
    const i = 4 * (y * c.width + x);
    if (data[i + 3] < 200) continue;
    if (colours.some(([r, g, b]) => Math.abs(data[i] - r) + Math.abs(data[i + 1] - g) + Math.abs(data[i + 2] - b) < 40)) {
      top = Math.min(top, y); bottom = Math.max(bottom, y);
    }
  }
  return {top, bottom, height: c.height};
}
"""


@pytest.mark.slow
def test_the_playgrounds_rough_edges_are_gone_in_a_real_browser(server):
    """Issue 23, item 6, each seen in headless Chromium before its fix."""
    from playwright.sync_api import expect

    with browser_page() as page:
        failed = []
        page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
        page.goto(server.url + "/")
        page.select_option("#model", TEXT)
        box = page.locator("#alternatives")
        # A resting pointer where tokens will stream in: the popup must not open by itself
        out = page.locator("#output").bounding_box()
        rest = (out["x"] + 30, out["y"] + 40)
        page.fill("#max_tokens", "600")
        page.fill("#seed", "3")
        page.mouse.move(*rest)
        page.press("#seed", "Enter")  # submitted from the keyboard: the pointer stays where it rests
        expect(page.locator("#stats")).to_contain_text("tokens/s", timeout=60_000)
        under = page.evaluate(f"document.elementFromPoint({rest[0]}, {rest[1]}).className")
        assert "tok" in under  # a token did arrive under the pointer...
        assert box.is_hidden()  # ...and opened nothing
        # Hover opens it for that token, marked; leaving closes it
        token = page.locator("#output .tok").nth(3)
        token.hover()
        expect(box).to_be_visible()
        expect(token).to_have_class(re.compile(r"\bopen\b"))
        assert page.locator("#output .tok.open").count() == 1
        page.mouse.move(5, 5)
        expect(box).to_be_hidden(timeout=2_000)
        assert page.locator("#output .tok.open").count() == 0
        # ...but not on the way into the popup, where the alternatives are picked
        token.hover()
        expect(box).to_be_visible()
        first = box.locator("button").first.bounding_box()
        page.mouse.move(first["x"] + 10, first["y"] + 5, steps=4)
        page.wait_for_timeout(500)
        expect(box).to_be_visible()
        # Every tint leaves the text readable (WCAG AA: 4.5:1)
        assert page.evaluate(CONTRAST) >= 4.5
        # The Generate tab does not look like the Generate button
        tab_bg = page.evaluate("getComputedStyle(document.getElementById('tab-generate')).backgroundColor")
        button_bg = page.evaluate("getComputedStyle(document.getElementById('generate')).backgroundColor")
        assert tab_bg != button_bg
        # An error takes the previous output away with it
        page.mouse.move(5, 5)
        page.fill("#prompt", "\u2603 is not in this model's vocabulary")
        page.click("#generate")
        expect(page.locator("#stats")).to_contain_text("error", timeout=10_000)
        assert page.locator("#output .tok").count() == 0 and page.locator("#output").inner_text() == ""
        # The model card: Markdown drawn as such, and the loss curves inside their frame
        page.click("#tab-card")
        expect(page.locator("#card table")).to_have_count(1)
        card = page.locator("#card").inner_text()
        assert "|---" not in card and "![" not in card and "```" not in card and "# Repytilian" not in card
        expect(page.locator("#card pre")).to_have_count(1)
        page.wait_for_timeout(300)
        curves = page.evaluate(CURVE_PIXELS)
        pad = 44
        assert curves["bottom"] > 0 and pad - 3 <= curves["top"] and curves["bottom"] <= curves["height"] - pad + 3
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "playground-card.png"), full_page=True)
        # No request of the page failed: /favicon.ico included
        assert page.request.get(server.url + "/favicon.ico").status == 200
        assert failed == [f"400 {server.url}/api/generate"], failed  # only the error asked for above


@pytest.mark.slow
def test_a_whole_answer_nobody_waits_for_stops_and_so_does_its_place_in_the_queue(server):
    import httpx

    def status():
        with httpx.Client(base_url=server.url, timeout=10) as c:
            return c.get("/api/status").json()

    def gives_up(body, after):  # a client that closes its connection after `after` seconds
        with httpx.Client(base_url=server.url, timeout=after) as c:
            with pytest.raises(httpx.TimeoutException):
                c.post("/v1/completions", json=body)

    def settles(deadline_s=5.0):
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            now = status()
            if now["active"] == 0 and now["waiting"] == 0:
                return now
            time.sleep(0.05)
        return status()

    long = {"model": TEXT, "prompt": "ROMEO:", "max_tokens": 100000}
    before = status()["generated_tokens"]
    gives_up(long, 0.5)  # not streamed: it used to run to its end (100,000 tokens), holding the one turn
    after = settles()
    assert after["active"] == 0 and after["generated_tokens"] - before < 20000
    with httpx.Client(base_url=server.url, timeout=60) as first:
        with first.stream("POST", "/v1/completions", json={**long, "stream": True}) as streaming:
            lines = streaming.iter_lines()
            next(lines)  # the one turn is taken
            gives_up({**long, "max_tokens": 5}, 0.5)  # waits in the queue, then goes away
            deadline = time.monotonic() + 5
            while status()["waiting"] and time.monotonic() < deadline:
                time.sleep(0.05)
            assert status()["waiting"] == 0 and status()["active"] == 1  # out of the queue while the first runs
    assert settles()["active"] == 0
    assert server.proc.poll() is None and not any("Traceback" in line for line in server.lines)


@pytest.mark.slow
def test_concurrent_requests_decode_together_and_each_gets_its_text_alone(models):
    """A real server: eight seeded requests of different prompts and lengths, sent at once, join
    one running batch and answer exactly what each answers alone."""
    import httpx

    s = RealServer(models, "--max-concurrent", "8", "--max-queue", "8")
    try:
        bodies = [{"model": TEXT, "prompt": prompt, "max_tokens": 40 + 7 * i, "seed": i, "temperature": 1.0,
                   "stop": ["\n\n"] if i % 3 == 0 else None}
                  for i, prompt in enumerate(["ROMEO:", "JULIET:\nO", "First Citizen:\nWe are", "KING", "A",
                                              "MENENIUS:\nWhy, masters", "O", "HAMLET: To be, or"])]
        with httpx.Client(base_url=s.url, timeout=60) as http:
            alone = [http.post("/v1/completions", json=b).json()["choices"][0]["text"] for b in bodies]
        together: list = [None] * len(bodies)

        def ask(i: int) -> None:
            with httpx.Client(base_url=s.url, timeout=60) as http:
                together[i] = http.post("/v1/completions", json=bodies[i]).json()["choices"][0]["text"]
        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(bodies))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        assert together == alone and len(set(alone)) == len(alone)
        with httpx.Client(base_url=s.url, timeout=60) as http:
            assert http.get("/api/status").json()["most_decoding_together"] >= 4  # they did overlap
    finally:
        s.stop()


def test_the_inspection_views_answer_as_json(client):
    from repytilian.api import load_model
    from repytilian.inspection import surprise

    text = "ROMEO:\nBut"
    r = client.post("/api/inspect", json={"model": TEXT, "view": "attention", "text": text})
    assert r.status_code == 200, r.text
    view = r.json()
    assert view["tokens"][:2] == ["R", "O"] and (view["layers"], view["heads"]) == (2, 4)
    import base64

    import numpy as np
    weights = np.frombuffer(base64.b64decode(view["weights_u8"]), dtype=np.uint8).reshape(2, 4, len(text), len(text))
    assert np.all(np.abs(weights.sum(-1) / 255 - 1) < 0.02)  # each row still sums to about 1
    one = client.post("/api/inspect", json={"model": TEXT, "view": "attention", "text": text, "layer": 2, "head": 3})
    exact = np.array(one.json()["weights"][0][0])
    assert exact.shape == (len(text), len(text)) and np.all(np.abs(exact * 255 - weights[1, 2]) <= 0.52)  # 4 decimals, then a byte
    assert np.allclose(exact.sum(-1), 1, atol=1e-3)
    lens = client.post("/api/inspect", json={"model": TEXT, "view": "lens", "text": text, "top": 3}).json()
    assert lens["stages"] == ["embeddings", "block 1", "block 2"] and len(lens["top"][2][0]) == 3
    emb = client.post("/api/inspect", json={"model": TEXT, "view": "embeddings"}).json()
    assert len(emb["tokens"]) == len(emb["labels"]) and len(emb["positions"][0]) == 2
    bits = client.post("/api/inspect", json={"model": TEXT, "view": "surprise", "text": text, "compare": TEXT}).json()
    lm = load_model(SHIPPED)
    assert bits["bits"] == [round(b, 4) for b in surprise(lm.model, lm.tokenizer, lm.tokenizer.encode(text)).bits.tolist()]
    assert bits["compare"]["difference"] == [0.0] * (len(text) - 1)
    music = client.post("/api/inspect", json={"model": MUSIC, "view": "surprise", "text": [1, 2, 3, 1]}).json()
    assert len(music["tokens"]) == 4 and len(music["bits"]) == 3  # JSON-token models take token ids


@pytest.mark.parametrize("body, status, words", [
    ({"view": "x-ray", "text": "a"}, 400, "view must be one of"),
    ({"view": "attention"}, 400, "give the text"),
    ({"view": "attention", "text": "a" * 65}, 400, "at most 64"),
    ({"view": "attention", "text": "ROMEO", "layer": 9}, 400, "layer"),
    ({"view": "surprise", "text": "ROMEO", "compare": "nope"}, 404, "nope"),
    ({"view": "surprise", "text": [1, 2], "model": MUSIC, "compare": TEXT}, 400, "different tokenizers"),
])
def test_bad_inspection_requests_get_the_usual_4xx(client, body, status, words):
    r = client.post("/api/inspect", json={"model": TEXT, **body})
    assert r.status_code == status and words in r.json()["error"]["message"], r.text


@pytest.mark.slow
def test_looking_inside_in_a_real_browser(server):
    """The "Look inside" tab: attention by hovering a token, every head as small maps, the logit lens
    for a picked token, surprise, the embeddings, all from the keyboard as well as the mouse."""
    from playwright.sync_api import expect

    with browser_page() as page:
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server.url + "/")
        page.select_option("#model", TEXT)
        page.click("#tab-inside")
        page.fill("#inside-text", "ROMEO:\nBut soft")
        page.click("#inside-show")
        tokens = page.locator("#inside-tokens .tok")
        expect(tokens).to_have_count(len("ROMEO:\nBut soft"))
        assert page.locator("#inside-layer").input_value() == "2"  # the last layer first
        tokens.nth(5).hover()  # ':' looks back over 'ROMEO'
        tints = [float(tokens.nth(j).evaluate("b => b.style.getPropertyValue('--p') || '0'")) for j in range(8)]
        assert sum(tints[:6]) > 0 and tints[6:] == [0, 0] and "selected" in tokens.nth(5).get_attribute("class")
        page.select_option("#inside-head", "all")
        expect(page.locator(".multiples figure")).to_have_count(2 * 4)
        page.select_option("#inside-view", "lens")
        expect(page.locator(".for-attention").first).to_be_hidden()
        page.click("#inside-show")
        expect(page.locator("#inside-detail table tr")).to_have_count(3)  # embeddings, block 1, block 2
        tokens.nth(2).focus()  # the keyboard picks a token too
        expect(page.locator("#inside-detail table")).to_have_attribute("aria-label", "Logit lens after token 3")
        page.select_option("#inside-view", "surprise")
        page.click("#inside-show")
        expect(page.locator("#inside-hint")).to_contain_text("bits per token on average")
        assert "bits" in tokens.nth(3).get_attribute("title")
        page.select_option("#inside-view", "embeddings")
        page.click("#inside-show")
        expect(page.locator("#inside-detail canvas.scatter")).to_have_count(1)
        page.fill("#inside-text", "x" * 100)  # beyond v1c's 64 tokens: the server's words, not a crash
        page.select_option("#inside-view", "attention")
        page.click("#inside-show")
        expect(page.locator("#inside-hint")).to_contain_text("at most 64")
        # What docs/inspection.md shows: v3c's layer 6 head 3 looks back at the start of the word...
        ARTIFACTS.mkdir(exist_ok=True)
        page.select_option("#model", BETTER)
        page.fill("#inside-text", "ROMEO: But soft, what light")
        page.select_option("#inside-view", "attention")
        page.click("#inside-show")
        page.select_option("#inside-layer", "6")
        page.select_option("#inside-head", "3")
        expect(page.locator(".multiples")).to_have_count(0)  # the maps of "all heads" went with it
        tokens.nth(23).hover()  # the i of light looks at the space before the word
        tints = [float(tokens.nth(j).evaluate("b => b.style.getPropertyValue('--p') || '0'")) for j in range(27)]
        assert max(range(27), key=tints.__getitem__) == 21 and tints[24:] == [0, 0, 0]
        page.screenshot(path=str(ARTIFACTS / "inside-attention.png"))
        # ...and the lens after the l of light: the embeddings, then six blocks, the last deciding
        page.select_option("#inside-view", "lens")
        page.click("#inside-show")
        tokens.nth(22).click()
        expect(page.locator("#inside-detail table tr")).to_have_count(7)
        expect(page.locator("#inside-detail table")).to_have_attribute("aria-label", "Logit lens after token 23")
        page.screenshot(path=str(ARTIFACTS / "inside-lens.png"))
        page.select_option("#model", TEXT)
        # Compare: the same text through two models, token by token
        page.select_option("#inside-view", "surprise")
        page.select_option("#inside-compare", BETTER)
        page.fill("#inside-text", "ROMEO:\nBut soft, what light through yonder window breaks?")
        page.click("#inside-show")
        expect(page.locator("#inside-hint")).to_contain_text(f"for {BETTER}")
        better, worse = (page.locator(f"#inside-tokens .tok.{kind}").count() for kind in ("better", "surprise"))
        assert better > worse > 0  # v3c is less surprised by most of the line, not by all of it
        page.screenshot(path=str(ARTIFACTS / "inside-compare.png"))
        # On a phone: every view fits the width (a wide table scrolls inside its box, the page not)
        page.set_viewport_size({"width": 390, "height": 844})
        for view in ("attention", "lens", "surprise", "embeddings"):
            page.select_option("#inside-view", view)
            page.click("#inside-show")
            expect(page.locator("#inside-hint")).not_to_have_text("Looking…")
            assert page.evaluate("document.documentElement.scrollWidth") <= 390, view
            if view == "attention":
                page.select_option("#inside-head", "all")  # the small multiples too
                assert page.evaluate("document.documentElement.scrollWidth") <= 390
        # A JSON-token model: its tokens shown as the JSON values they are
        page.set_viewport_size({"width": 900, "height": 900})
        page.select_option("#model", MUSIC)
        assert page.locator("#inside-text").input_value() == "[1, 2, 3]"
        page.select_option("#inside-view", "attention")
        page.click("#inside-show")
        expect(tokens).to_have_count(3)
        labels = tokens.all_text_contents()
        assert all(json.loads(label) is not None for label in labels), labels
        assert errors == []
