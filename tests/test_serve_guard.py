"""Who may talk to `repytilian serve`, against the real server on 127.0.0.1: requests addressed to
other hosts (DNS rebinding), other sites' pages, bodies that are not JSON, and an API key."""
import json
from pathlib import Path

import pytest
from conftest import run_script
from test_serve import TEXT, RealServer, browser_page, models  # noqa: F401 - the module's models folder

pytest.importorskip("starlette")
httpx = pytest.importorskip("httpx")

KEY = "s3cret-key"
PAGE = "http://localhost:3000"  # a local web app the user allowed with --cors-origin
BODY = {"model": TEXT, "prompt": "ROMEO:", "max_tokens": 3, "seed": 1}


@pytest.fixture(scope="module")
def guarded(models):  # noqa: F811
    s = RealServer(models, "--api-key", KEY, "--cors-origin", PAGE, "--allow-host", "lab.example")
    yield s
    s.stop()


def error_code(response) -> str:
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    return response.json()["error"]["code"]


def test_only_requests_addressed_to_this_machine_are_answered(guarded):
    auth = {"Authorization": f"Bearer {KEY}"}
    port = guarded.url.rsplit(":", 1)[1]
    with httpx.Client(base_url=guarded.url, headers=auth, timeout=30) as c:
        for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", "localhost.evil.example"):
            refused = c.get("/v1/models", headers={"Host": host})
            assert refused.status_code == 403 and error_code(refused) == "host_not_allowed", host
            assert c.get("/", headers={"Host": host}).status_code == 403  # nor the page (DNS rebinding)
        for host in ("localhost", f"localhost:{port}", f"127.0.0.1:{port}", "[::1]:8000", f"lab.example:{port}"):
            assert c.get("/v1/models", headers={"Host": host}).status_code == 200, host


def test_other_sites_pages_are_refused_unless_allowed(guarded):
    auth = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=guarded.url, headers=auth, timeout=30) as c:
        evil = c.post("/v1/completions", json=BODY, headers={"Origin": "http://evil.example"})
        assert evil.status_code == 403 and error_code(evil) == "origin_not_allowed"
        assert "access-control-allow-origin" not in evil.headers
        preflight = c.options("/v1/completions", headers={"Origin": "http://evil.example",
                                                           "Access-Control-Request-Method": "POST"})
        assert preflight.status_code == 403
        allowed = c.post("/v1/completions", json=BODY, headers={"Origin": PAGE})
        assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == PAGE
        preflight = c.options("/v1/completions", headers={"Origin": PAGE, "Access-Control-Request-Method": "POST",
                                                           "Access-Control-Request-Headers": "authorization"})
        assert preflight.status_code == 204 and preflight.headers["access-control-allow-origin"] == PAGE
        assert "Authorization" in preflight.headers["access-control-allow-headers"]
        own = c.post("/v1/completions", json=BODY, headers={"Origin": guarded.url})  # the playground itself
        assert own.status_code == 200


def test_a_simple_cross_site_post_is_not_json_and_is_refused(guarded):
    auth = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=guarded.url, headers=auth, timeout=30) as c:
        for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
            headers = {"Content-Type": kind} if kind else {}
            r = c.post("/v1/completions", content=b'{"prompt": "a"}', headers=headers)
            assert r.status_code == 415 and error_code(r) == "unsupported_media_type", kind
        assert c.post("/api/generate", content=b"{}", headers={"Content-Type": "text/plain"}).status_code == 415
        ok = c.post("/v1/completions", content=b'{"model": "shakespeare/v1c", "prompt": "ROMEO:", "max_tokens": 2}',
                    headers={"Content-Type": "application/json; charset=utf-8"})
        assert ok.status_code == 200


def test_the_api_needs_the_key_and_the_page_does_not(guarded):
    with httpx.Client(base_url=guarded.url, timeout=30) as c:
        for path in ("/v1/models", "/api/models", "/api/status"):
            r = c.get(path)
            assert r.status_code == 401 and error_code(r) == "invalid_api_key", path
            assert r.headers["www-authenticate"] == "Bearer"
        for wrong in ("Bearer nope", f"Basic {KEY}", f"Bearer {KEY}x", KEY):
            assert c.get("/v1/models", headers={"Authorization": wrong}).status_code == 401, wrong
        page = c.get("/")
        assert page.status_code == 200 and "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert c.get("/static/app.js").status_code == 200
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=guarded.url + "/v1", api_key=KEY)
    assert client.completions.create(model=TEXT, prompt="ROMEO:", max_tokens=3, seed=1).choices[0].text
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=guarded.url + "/v1", api_key="wrong").models.list()
    assert guarded.proc.poll() is None and not any("Traceback" in line for line in guarded.lines)


@pytest.mark.slow
def test_the_playground_asks_for_the_key_once(guarded):
    from playwright.sync_api import expect

    with browser_page() as page:
        asked = []
        page.on("dialog", lambda dialog: (asked.append(dialog.message), dialog.accept(KEY)))
        page.goto(guarded.url + "/")
        page.select_option("#model", TEXT)
        page.fill("#prompt", "ROMEO:")
        page.fill("#max_tokens", "20")
        page.click("#generate")
        expect(page.locator("#stats")).to_contain_text("tokens/s", timeout=60_000)
        assert page.locator("#output .tok").count() == 20
        assert len(asked) == 1 and "API key" in asked[0]  # kept for the tab after that


def test_listening_beyond_this_machine_needs_a_key_or_no_auth(models, tmp_path, monkeypatch):  # noqa: F811
    r = run_script("serve", "--models", str(models), "--host", "0.0.0.0", "--port", "0", cwd=tmp_path)
    assert r.returncode == 2 and "--api-key KEY" in r.stderr and "--no-auth" in r.stderr
    import argparse

    from repytilian.cli.serve import add_serve_arguments, api_key
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    (tmp_path / "key.txt").write_text("from-a-file\n")
    assert api_key(parser.parse_args(["--api-key-file", str(tmp_path / "key.txt")])) == "from-a-file"
    monkeypatch.setenv("REPYTILIAN_API_KEY", "from-the-environment")
    assert api_key(parser.parse_args([])) == "from-the-environment"
    assert api_key(parser.parse_args(["--api-key", "given"])) == "given"


def test_a_port_already_in_use_is_said_in_words(models, tmp_path):  # noqa: F811
    """Was uvicorn's own "ERROR: [Errno 98] error while attempting to bind on address ('127.0.0.1',
    8000): address already in use", exit status 3: a second `repytilian serve` is a common slip."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = run_script("serve", "--models", str(models), "--port", str(port), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert f"port {port} on 127.0.0.1 is in use already" in r.stderr and "--port 0" in r.stderr, r.stderr
    assert "Errno" not in r.stderr and "Traceback" not in r.stderr


def test_nothing_outside_the_models_folder_is_read_and_replaced_folders_are_not_served_stale(tmp_path):
    import os
    import shutil

    from starlette.testclient import TestClient
    from test_serve import SHIPPED

    from repytilian.serve.app import create_app
    from repytilian.serve.registry import Registry

    root, outside = tmp_path / "models", tmp_path / "outside"
    outside.mkdir()
    (outside / "README.md").write_text("SECRET CARD")
    (outside / "metrics.jsonl").write_text('{"step": 1, "val_loss": 9.9}\n')
    (outside / "live.jsonl").write_text('{"step": 7, "val_loss": 7.7}\n')
    for name in ("a", "b", "c"):
        shutil.copytree(SHIPPED, root / name)
    (root / "a" / "README.md").unlink()
    (root / "a" / "README.md").symlink_to(outside / "README.md")  # a card that leads out
    (root / "a" / "metrics.jsonl").unlink()
    (root / "a" / "metrics.jsonl").symlink_to(outside / "metrics.jsonl")
    (root / ".d.live.jsonl").symlink_to(outside / "live.jsonl")  # a "training" folder that leads out
    (root / "....live.jsonl").write_text('{"step": 1}\n')  # would name a model ".." (the parent's card)
    (root / "b" / "model.safetensors").unlink()
    (root / "b" / "model.safetensors").symlink_to(SHIPPED.resolve() / "model.safetensors")  # weights from outside
    registry = Registry(root=root, max_loaded=1)
    with TestClient(create_app(registry), base_url="http://localhost") as c:
        ids = [m["id"] for m in c.get("/api/models").json()["models"]]
        assert ids == ["a", "b", "c"]  # neither "d" nor ".."
        card = c.get("/api/card", params={"model": "a"}).json()
        assert "SECRET" not in card["card"] and card["metrics"] == []
        refused = c.post("/v1/completions", json={"model": "b", "prompt": "A", "max_tokens": 2})
        assert refused.status_code == 404 and "outside the models folder" in refused.json()["error"]["message"]
        body = {"model": "c", "prompt": "ROMEO:", "max_tokens": 8, "temperature": 0}
        first = c.post("/v1/completions", json=body).json()["choices"][0]["text"]
        assert c.post("/v1/completions", json={**body, "model": "a"}).status_code == 200  # c let go (max 1)
        assert list(registry._loaded) == ["a"]
        # c replaced in place by other weights within the same second: loaded again, not served stale
        weights = root / "c" / "model.safetensors"
        from safetensors.torch import load_file, save_file
        tensors = {k: v * 0 for k, v in load_file(weights).items()}
        stat = weights.stat()
        save_file(tensors, str(weights), metadata={"format": "pt"})
        os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even the same modification time
        assert c.post("/v1/completions", json=body).json()["choices"][0]["text"] != first
        # a model that cannot be loaded names its id, not a path of this machine
        (root / "a" / "tokenizer.json").write_text("{damaged")
        (root / "a" / "config.json").touch()
        broken = c.post("/v1/completions", json={**body, "model": "a"})
        assert broken.status_code == 500 and "model a could not be loaded" in broken.text
        assert str(tmp_path) not in broken.text


def test_loading_a_model_takes_a_turn_at_the_gate(tmp_path):
    import asyncio
    import shutil

    from test_serve import SHIPPED

    from repytilian.serve.admission import Server
    from repytilian.serve.http import ApiError
    from repytilian.serve.limits import Limits
    from repytilian.serve.registry import Registry

    shutil.copytree(SHIPPED, tmp_path / "models" / "m")
    server = Server(Registry(root=tmp_path / "models"), Limits(max_active=1, max_waiting=0))

    async def scenario():
        await server.gate.enter()  # the one turn is taken, and nobody may wait
        with pytest.raises(ApiError) as refused:
            await server.model({"model": "m"})
        assert refused.value.status == 429 and server.registry.loaded(server.registry.find("m")) is None
        server.gate.leave()
        info, lm = await server.model({"model": "m"})  # a turn free: loaded (off the event loop)
        assert server.gate.active == 0 and server.registry.loaded(info) is lm

    asyncio.run(scenario())


def test_a_client_gone_mid_body_leaves_no_traceback(guarded):
    import socket
    import time

    host, port = guarded.url.split("//")[1].split(":")
    before = len(guarded.lines)
    for _ in range(3):
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                      f"Authorization: Bearer {KEY}\r\nContent-Length: 5000\r\n\r\n{{\"prompt\": \"".encode())
            time.sleep(0.2)  # the server is reading the body when the client goes
    time.sleep(0.5)
    with httpx.Client(base_url=guarded.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as c:
        assert c.get("/api/status").status_code == 200
    assert not [line for line in guarded.lines[before:] if "Traceback" in line or "failed" in line], guarded.lines


def test_a_model_is_found_by_its_path_exactly_as_the_scan_lists_it(tmp_path):
    """`find` looks along the id's path only; it must agree with the scan of the whole folder."""
    from repytilian.serve.registry import ModelNotFound, Registry

    root, outside = tmp_path / "models", tmp_path / "outside"

    def model(folder: Path, valid: bool = True) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"format": "repytilian-model", "tokenizer": "characters"} if valid else {}
        (folder / "config.json").write_text(json.dumps(meta))

    for name in ("a/m1", "a/m1/nested", "b", "g/h/i/j", "g/h/i/j2/k", ".hidden/m", "bad/m", "x/y/z"):
        model(root / name)
    model(root / "bad", valid=False)  # not a model: the scan looks inside it
    (root / "x" / ".new.live.jsonl").write_text("{}\n")  # a first run, its folder not made yet
    (root / "x" / ".y.live.jsonl").write_text("{}\n")  # beside a folder that exists
    (root / "x" / ".f.live.jsonl").write_text("{}\n")  # beside a file of that name
    (root / "x" / "f").write_text("")
    (root / "x" / ".gone.live.jsonl").symlink_to(outside / "live.jsonl")
    model(outside / "m")
    (outside / "live.jsonl").write_text("{}\n")
    (root / "out").symlink_to(outside)
    (root / "inlink").symlink_to(root / "a")
    registry = Registry(root=root)

    listed = {info.id: info for info in registry.scan(training=True)}
    assert set(listed) == {"a/m1", "b", "g/h/i/j", "bad/m", "x/y/z", "x/new", "inlink/m1"}
    for model_id, info in listed.items():
        found = registry.find(model_id, training=True)
        assert (found.id, found.path, found.ready) == (info.id, info.path, info.ready)
    others = ["a", "a/m1/nested", "g/h/i/j2/k", ".hidden/m", "bad", "x/y", "x/f", "x/gone", "out/m", "../outside/m",
              "a/../b", "/b", "b/", "", "a//m1", "x", "missing", str(root / "b")]
    for model_id in others:
        with pytest.raises(ModelNotFound):
            registry.find(model_id, training=True)


def test_a_model_found_is_found_again_without_reading_its_folder_until_it_changes(tmp_path, monkeypatch):
    """Requests for one model find it again from memory (one stat of its config.json), but a config
    rewritten, a folder gone or replaced by a symlink out of the models folder is seen at once."""
    import shutil

    from repytilian.serve import registry as registry_module
    from repytilian.serve.registry import ModelNotFound, Registry

    root, outside = tmp_path / "models", tmp_path / "outside"

    def model(folder: Path, loss: float) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"format": "repytilian-model", "tokenizer": "characters", "summary": {"val_loss_full": loss}}
        (folder / "config.json").write_text(json.dumps(meta))

    model(root / "m", 2.0)
    registry = Registry(root=root)
    looked, look = [], registry._look_along
    monkeypatch.setattr(registry, "_look_along", lambda model_id: looked.append(model_id) or look(model_id))
    assert registry.find("m").val_loss == 2.0 and registry.find("m").val_loss == 2.0
    assert looked == ["m"]
    model(root / "m", 1.25)  # rewritten (its length differs: the same modification time may come back)
    assert registry.find("m").val_loss == 1.25 and looked == ["m", "m"]
    monkeypatch.setattr(registry_module, "FOUND_SECONDS", 0.0)  # remembered no longer: looked at again
    registry.find("m")
    assert looked == ["m", "m", "m"]
    monkeypatch.setattr(registry_module, "FOUND_SECONDS", 60.0)
    shutil.copytree(root / "m", outside / "m")
    shutil.rmtree(root / "m")
    with pytest.raises(ModelNotFound):
        registry.find("m")
    (root / "m").symlink_to(outside / "m")  # the same config, but out of the models folder
    with pytest.raises(ModelNotFound):
        registry.find("m")
