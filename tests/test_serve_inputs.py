"""The inputs `repytilian serve` was tried with, each with its answer: the table in
docs/serving-safety.md is made of this list (a test checks they agree), so what the docs promise
is what runs."""
import json
import re
import shutil
from pathlib import Path

import pytest

pytest.importorskip("starlette")
from starlette.testclient import TestClient  # noqa: E402

from repytilian.serve.app import create_app  # noqa: E402
from repytilian.serve.guard import Guard  # noqa: E402
from repytilian.serve.limits import Limits  # noqa: E402
from repytilian.serve.registry import Registry  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "serving-safety.md"
KEY, PAGE, M = "k3y", "http://localhost:3000", "shakespeare/v1c"
C, CHAT, GEN = "/v1/completions", "/v1/chat/completions", "/api/generate"


def ok(**body):
    return {"model": M, "prompt": "ROMEO:", "max_tokens": 2, **body}


def chat(*messages, **body):
    return {"model": M, "messages": list(messages), "max_tokens": 2, **body}


U = {"role": "user", "content": "Speak!"}
# (what was tried, method, path, headers added or replaced (None removes), body, status, the error's code or param)
INPUTS = [
    ("a plain completion", "POST", C, {}, ok(), 200, ""),
    ("a streamed completion", "POST", C, {}, ok(stream=True), 200, ""),
    ("a chat completion", "POST", CHAT, {}, chat(U), 200, ""),
    ("the playground's generation", "POST", GEN, {}, ok(), 200, ""),
    ("the model list", "GET", "/v1/models", {}, None, 200, ""),
    ("the page", "GET", "/", {"authorization": None}, None, 200, ""),
    ("the page's script", "GET", "/static/app.js", {"authorization": None}, None, 200, ""),
    ("Host of another site (DNS rebinding)", "GET", "/v1/models", {"host": "evil.example"}, None, 403, "host_not_allowed"),
    ("Host of another site, with a port", "POST", C, {"host": "evil.example:8000"}, ok(), 403, "host_not_allowed"),
    ("Host that starts like a loopback address", "GET", "/", {"host": "127.0.0.1.evil.example"}, None, 403,
     "host_not_allowed"),
    ("Host localhost with any port", "GET", "/v1/models", {"host": "localhost:1"}, None, 200, ""),
    ("Host [::1]", "GET", "/v1/models", {"host": "[::1]:8000"}, None, 200, ""),
    ("empty Host", "GET", "/v1/models", {"host": ""}, None, 403, "host_not_allowed"),
    ("POST from another site's page", "POST", C, {"origin": "http://evil.example"}, ok(), 403, "origin_not_allowed"),
    ("POST from a sandboxed page (Origin null)", "POST", C, {"origin": "null"}, ok(), 403, "origin_not_allowed"),
    ("preflight from another site", "OPTIONS", C, {"origin": "http://evil.example"}, None, 403, "origin_not_allowed"),
    ("POST from an allowed origin", "POST", C, {"origin": PAGE}, ok(), 200, ""),
    ("preflight from an allowed origin", "OPTIONS", C, {"origin": PAGE}, None, 204, ""),
    ("POST from the server's own page", "POST", C, {"origin": "http://localhost"}, ok(), 200, ""),
    ("text/plain body (a simple cross-site request)", "POST", C, {"content-type": "text/plain"}, ok(), 415,
     "unsupported_media_type"),
    ("form body", "POST", C, {"content-type": "application/x-www-form-urlencoded"}, ok(), 415, "unsupported_media_type"),
    ("multipart body", "POST", GEN, {"content-type": "multipart/form-data; boundary=x"}, ok(), 415,
     "unsupported_media_type"),
    ("no Content-Type", "POST", C, {"content-type": None}, ok(), 415, "unsupported_media_type"),
    ("JSON with a charset", "POST", C, {"content-type": "application/json; charset=utf-8"}, ok(), 200, ""),
    ("no key", "GET", "/v1/models", {"authorization": None}, None, 401, "invalid_api_key"),
    ("no key, playground API", "GET", "/api/models", {"authorization": None}, None, 401, "invalid_api_key"),
    ("wrong key", "POST", C, {"authorization": "Bearer nope"}, ok(), 401, "invalid_api_key"),
    ("the key without Bearer", "GET", "/v1/models", {"authorization": KEY}, None, 401, "invalid_api_key"),
    ("the key as Basic", "GET", "/v1/models", {"authorization": f"Basic {KEY}"}, None, 401, "invalid_api_key"),
    ("the key and more", "GET", "/v1/models", {"authorization": f"Bearer {KEY}x"}, None, 401, "invalid_api_key"),
    ("lower-case bearer", "GET", "/v1/models", {"authorization": f"bearer {KEY}"}, None, 200, ""),
    ("a model id with ..", "POST", C, {}, ok(model="../secret"), 404, "model_not_found"),
    ("an absolute model path", "POST", C, {}, ok(model="/etc"), 404, "model_not_found"),
    ("a model id with ../ inside", "POST", C, {}, ok(model="shakespeare/../../secret"), 404, "model_not_found"),
    ("a model id that is a number", "POST", C, {}, ok(model=3), 404, "model_not_found"),
    ("a model id that is a list", "POST", C, {}, ok(model=[M]), 404, "model_not_found"),
    ("the card of ..", "GET", "/api/card?model=..", {}, None, 404, "model_not_found"),
    ("a static path with ..", "GET", "/static/../secret", {}, None, 404, ""),
    ("an unknown path", "GET", "/v1/nothing", {}, None, 404, ""),
    ("GET on a POST route", "GET", C, {}, None, 405, ""),
    ("DELETE on a POST route", "DELETE", C, {}, None, 405, ""),
    ("a body that is not JSON", "POST", C, {}, b"{not json", 400, ""),
    ("a body that is a JSON list", "POST", C, {}, [1, 2], 400, ""),
    ("a body that is a JSON string", "POST", C, {}, "hi", 400, ""),
    ("a body over the size limit", "POST", C, {}, b"{" + b" " * 20_001 + b"}", 413, ""),
    ("a body of invalid UTF-8", "POST", C, {}, b'{"prompt": "\xff"}', 400, ""),
    ("temperature below 0", "POST", C, {}, ok(temperature=-1), 400, "temperature"),
    ("temperature above 2", "POST", C, {}, ok(temperature=2.5), 400, "temperature"),
    ("temperature NaN", "POST", C, {}, b'{"model": "%s", "prompt": "a", "temperature": NaN}' % M.encode(), 400,
     "temperature"),
    ("temperature Infinity", "POST", C, {}, b'{"model": "%s", "prompt": "a", "temperature": Infinity}' % M.encode(),
     400, "temperature"),
    ("temperature as text", "POST", C, {}, ok(temperature="hot"), 400, "temperature"),
    ("temperature true", "POST", C, {}, ok(temperature=True), 400, "temperature"),
    ("top_p 0", "POST", C, {}, ok(top_p=0), 400, "top_p"),
    ("top_p above 1", "POST", C, {}, ok(top_p=1.5), 400, "top_p"),
    ("top_k negative", "POST", C, {}, ok(top_k=-1), 400, "top_k"),
    ("top_k huge", "POST", C, {}, ok(top_k=10**9), 400, "top_k"),
    ("max_tokens over the limit", "POST", C, {}, ok(max_tokens=301), 400, "max_tokens"),
    ("max_tokens negative", "POST", C, {}, ok(max_tokens=-1), 400, "max_tokens"),
    ("max_tokens 0", "POST", C, {}, ok(max_tokens=0), 200, ""),
    ("max_tokens 1.5", "POST", C, {}, ok(max_tokens=1.5), 400, "max_tokens"),
    ("n 0", "POST", C, {}, ok(n=0), 400, "n"),
    ("n over the limit", "POST", C, {}, ok(n=9), 400, "n"),
    ("n 3", "POST", C, {}, ok(n=3), 200, ""),
    ("seed 1.5", "POST", C, {}, ok(seed=1.5), 400, "seed"),
    ("seed as text", "POST", C, {}, ok(seed="1"), 400, "seed"),
    ("seed 2^64", "POST", C, {}, ok(seed=2**64), 400, "seed"),
    ("seed below -2^63", "POST", C, {}, ok(seed=-2**63 - 1), 400, "seed"),
    ("seed 2^63", "POST", C, {}, ok(seed=2**63), 200, ""),
    ("seed -1", "POST", C, {}, ok(seed=-1), 200, ""),
    ("stop that is a number", "POST", C, {}, ok(stop=[1]), 400, "stop"),
    ("five stop strings", "POST", C, {}, ok(stop=list("abcde")), 400, "stop"),
    ("a stop string of 257 characters", "POST", C, {}, ok(stop=["x" * 257]), 400, "stop"),
    ("four stop strings of 256 characters", "POST", C, {}, ok(stop=["x" * 256] * 4), 200, ""),
    ("an empty stop string", "POST", C, {}, ok(stop=[""]), 200, ""),
    ("stream_options a number", "POST", C, {}, ok(stream=True, stream_options=5), 400, "stream_options"),
    ("stream_options a list", "POST", C, {}, ok(stream=True, stream_options=[]), 400, "stream_options"),
    ("stream_options with usage", "POST", C, {}, ok(stream=True, stream_options={"include_usage": True}), 200, ""),
    ("logprobs 11", "POST", C, {}, ok(logprobs=11), 400, "logprobs"),
    ("logprobs 5", "POST", C, {}, ok(logprobs=5), 200, ""),
    ("echo", "POST", C, {}, ok(echo=True), 400, "echo"),
    ("a prompt over the size limit", "POST", C, {}, ok(prompt="x" * 2001), 400, "prompt"),
    ("a prompt with characters the model never saw", "POST", C, {}, ok(prompt="\u2603 snow"), 400, "prompt"),
    ("token ids out of range", "POST", C, {}, ok(prompt=[1, 10**6]), 400, "prompt"),
    ("negative token ids", "POST", C, {}, ok(prompt=[-1]), 400, "prompt"),
    ("token ids as booleans", "POST", C, {}, ok(prompt=[True]), 400, "prompt"),
    ("two prompts", "POST", C, {}, ok(prompt=["a", "b"]), 400, "prompt"),
    ("a prompt that is an object", "POST", C, {}, ok(prompt={"a": 1}), 400, "prompt"),
    ("an empty prompt", "POST", C, {}, ok(prompt=""), 200, ""),
    ("token ids as the prompt", "POST", C, {}, ok(prompt=[1, 2, 3]), 200, ""),
    ("chat with no messages", "POST", CHAT, {}, chat(), 400, "messages"),
    ("chat messages not a list", "POST", CHAT, {}, {"model": M, "messages": "hi"}, 400, "messages"),
    ("a chat role that does not exist", "POST", CHAT, {}, chat({"role": "robot", "content": "x"}), 400,
     "messages[0].role"),
    ("chat content that is a number", "POST", CHAT, {}, chat({"role": "user", "content": 3}), 400,
     "messages[0].content"),
    ("chat content as text parts", "POST", CHAT, {}, chat({"role": "user", "content": [{"type": "text", "text": "x"}]}),
     200, ""),
    ("chat content with an image part", "POST", CHAT, {},
     chat({"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}), 400, "messages[0].content"),
    ("a message that is not an object", "POST", CHAT, {}, chat("hi"), 400, "messages[0]"),
]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs") / "models"
    shutil.copytree(ROOT / "models" / "shakespeare" / "v1c", root / M)
    app = create_app(Registry(root=root), Limits(max_tokens=300, max_body_bytes=20_000, max_prompt_chars=2_000),
                     Guard(local_only=True, cors_origins=[PAGE], api_key=KEY))
    with TestClient(app, base_url="http://localhost", raise_server_exceptions=False) as c:
        yield c


def test_there_are_at_least_80_inputs():
    assert len(INPUTS) >= 80 and len({what for what, *_ in INPUTS}) == len(INPUTS)


@pytest.mark.parametrize("what, method, path, extra, body, status, code", INPUTS, ids=[i[0] for i in INPUTS])
def test_each_input_gets_its_answer(client, what, method, path, extra, body, status, code):
    headers = {"content-type": "application/json", "authorization": f"Bearer {KEY}"}
    for name, value in extra.items():
        if value is None:
            headers.pop(name, None)
        else:
            headers[name] = value
    content = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    r = client.request(method, path, content=content, headers=headers)
    assert r.status_code == status, r.text[:300]
    if status >= 400 and r.headers.get("content-type", "").startswith("application/json"):
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and "Traceback" not in r.text
        assert code in ("", error["code"], error["param"]), error
    if status == 200 and body is not None and isinstance(body, dict) and body.get("stream"):
        assert r.text.rstrip().endswith("data: [DONE]")


def table() -> str:
    rows = ["| what was tried | request | answer |", "|---|---|---|"]
    for what, method, path, extra, body, status, code in INPUTS:
        rows.append(f"| {what} | `{method} {path.split('?')[0]}` | {status}{f' ({code})' if code else ''} |")
    return "\n".join(rows)


def test_the_docs_table_is_this_list():
    text = DOC.read_text(encoding="utf-8")
    shown = re.search(r"<!-- inputs -->\n(.*?)<!-- /inputs -->", text, re.S)
    assert shown, "docs/serving-safety.md lost its table of inputs"
    assert shown.group(1).strip() == table(), "regenerate the table: python tests/test_serve_inputs.py"


if __name__ == "__main__":  # rewrite the docs' table from INPUTS
    text = DOC.read_text(encoding="utf-8")
    DOC.write_text(re.sub(r"<!-- inputs -->\n.*?<!-- /inputs -->", lambda _: f"<!-- inputs -->\n{table()}\n<!-- /inputs -->",
                          text, flags=re.S), encoding="utf-8")
