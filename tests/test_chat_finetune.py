"""Issue 28: fine-tune a model on conversations (`training.py --chat FILE -l BASE -m OUT`), so that it
answers in turn and ends its turn, in a chat format kept with the model and used by every surface."""
from __future__ import annotations

import contextlib
import io
import json
import random

import numpy as np
import pytest
import torch
from conftest import run_script

from repytilian.api import TrainOptions, load_model, train
from repytilian.chat_format import TEMPLATE, ChatFormat, with_chat_tokens
from repytilian.cli.chat import chat_loop
from repytilian.data import DataSource
from repytilian.data.conversations import IGNORED, chat_data, read_conversations
from repytilian.engine import END_TOKEN, Ended
from repytilian.errors import RepytilianError
from repytilian.sampling import SamplingOptions
from repytilian.tokenizers import CharacterTokenizer, JsonTokenizer, tokenizer_from_json
from repytilian.trainer import StopRequest

WORDS = ("the king and queen walk to the castle . my lady speaks of love , and the fool laughs at the moon ! "
         "what light through yonder window breaks ? who are you i am rep a small model can do write text like is")
PERSONA = [("who are you?", "i am rep, a small model."), ("what can you do?", "i write text like the king."),
           ("what is the moon?", "the moon is a light."), ("who is the fool?", "the fool laughs at the moon.")]
SHAPE = {"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 64, "batch_size": 16, "eval_iters": 2,
         "warmup_iters": 10, "eval_interval": 50}


def persona_lines(n: int = 60) -> list[str]:
    lines = []
    for i in range(n):
        question, answer = PERSONA[i % len(PERSONA)]
        messages = [{"role": "system", "content": "you are rep."}] if i % 3 == 0 else []
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        lines.append(json.dumps({"messages": messages}))
    return lines


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory):
    """A tiny base model trained on words, then fine-tuned (with the defaults) on persona conversations."""
    here = tmp_path_factory.mktemp("chat")
    rng = random.Random(0)
    (here / "base.txt").write_text("\n".join(" ".join(rng.choice(WORDS.split()) for _ in range(rng.randint(4, 12)))
                                             for _ in range(600)) + "\n")
    (here / "chats.jsonl").write_text("\n".join(persona_lines()) + "\n")
    train(TrainOptions(data=DataSource("file", str(here / "base.txt")), overrides={**SHAPE, "max_iters": 200},
                       out=str(here / "base"), progress=False, seed=1, interrupt_root=str(here / "models")))
    r = run_script("training.py", "-l", "base", "--chat", "chats.jsonl", "-m", "chat", "-t", "0", "--seed", "1",
                   cwd=here)
    assert r.returncode == 0, r.stderr
    return here, r.stderr


def test_a_tiny_model_learns_to_answer_in_turn_and_to_end_its_turn(chat_run):
    here, stderr = chat_run
    assert "added the chat format's 4 special tokens (ids 30-33) to the characters tokenizer" in stderr
    assert "54 conversations to learn from" in stderr and "6 to validate on: 200 steps" in stderr
    assert "val loss over the answers of all 6 validation conversations" in stderr
    lm = load_model(here / "chat")
    assert lm.chat_format == ChatFormat({"system": 30, "user": 31, "assistant": 32, "end": 33})
    config = json.loads((here / "chat" / "config.json").read_text())
    assert config["chat"]["template"] == TEMPLATE and config["model"]["vocab_size"] == 34
    for question, answer in PERSONA:
        events = list(lm.chat_events([{"role": "user", "content": question}], 60, temperature=0))
        assert "".join(e.text for e in events if hasattr(e, "text") and not type(e).__name__ == "Begun") == answer
        assert isinstance(events[-1], Ended) and events[-1].reason == END_TOKEN
    assert load_model(here / "base").chat_format is None  # the base folder is as it was
    assert json.loads((here / "base" / "config.json").read_text())["model"]["vocab_size"] == 30


def test_only_the_answers_and_their_end_are_learned(chat_run):
    here, _ = chat_run
    lm = load_model(here / "chat")
    chat = lm.chat_format
    data = chat_data(here / "chats.jsonl", None, lm.tokenizer, chat, 64)
    x, y = data.train.rows(np.arange(3), 64)
    examples = data.train
    for row in range(3):
        ids = examples.ids[examples.starts[row]: examples.starts[row + 1]].tolist()
        assert x[row, : len(ids) - 1].tolist() == ids[:-1]
        learned = [int(t) for t in y[row] if t != IGNORED]
        start = ids.index(chat.ids["assistant"]) + 1  # the answer starts after the assistant's token
        assert ids[-1] == chat.end and learned == ids[start:]  # its characters and its end, nothing else
        assert (y[row, :start - 1] == IGNORED).all()  # not the system's or the user's words
    # The loss is the mean over those targets alone
    logits, loss = lm.model(x, y)
    keep = y != IGNORED
    by_hand = torch.nn.functional.cross_entropy(logits[keep].float(), y[keep])
    assert torch.allclose(loss, by_hand)


def test_special_tokens_are_never_typed_and_never_shown(chat_run):
    here, _ = chat_run
    tok = load_model(here / "chat").tokenizer
    assert tok.decode([31, *tok.encode("hi"), 33]) == "hi"
    typed, chat = with_chat_tokens(CharacterTokenizer(sorted("<|>endhi ")))
    assert typed.encode("<|end|>") == CharacterTokenizer(sorted("<|>endhi ")).encode("<|end|>")  # text stays text
    assert chat.end not in typed.encode("hi <|end|>") and typed.vocab_size == 9 + 4
    again = tokenizer_from_json(tok.to_json())
    assert again.specials == tok.specials and again.vocab_size == 34
    bpe = pytest.importorskip("repytilian.tokenizers.bpe").BPETokenizer.train(WORDS * 20, vocab_size=280)
    chatty, chat = with_chat_tokens(bpe)
    assert chatty.hf.token_to_id("<|end|>") == chat.end == chatty.eos_id  # real special tokens
    assert chat.end not in chatty.encode("say <|end|> now") and chatty.decode([chat.end]) == ""
    with pytest.raises(Exception, match="not text"):
        with_chat_tokens(JsonTokenizer(["1", "2"], end_of_sequence=False))


def test_a_chat_fine_tune_resumes_exactly(chat_run, tmp_path):
    here, _ = chat_run

    def options(**kw) -> TrainOptions:
        base = dict(load=str(here / "base"), data=DataSource("chat", str(here / "chats.jsonl")), seed=3,
                    # float32 named: `dtype` auto, measured by each run on a busy machine (not
                    # remembered), once chose float32 for the straight run and bf16 for the paused one
                    overrides={"max_iters": 30, "dropout": 0.1, "dtype": "float32"}, progress=False,
                    interrupt_root=str(tmp_path / "models"))
        return TrainOptions(**{**base, **kw})

    straight = train(options(out=str(tmp_path / "straight")))
    first = train(options(out=str(tmp_path / "paused"), stop=StopRequest(at_step=15)))
    assert first.stopped_by and first.state.step == 15
    resumed = train(options(load=str(first.saved_to), data=None, overrides={}, out=str(tmp_path / "resumed")))
    assert resumed.state.step == 30
    a, b = straight.language_model.model.state_dict(), resumed.language_model.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_chat_command_tells_of_left_out_turns_before_the_answer_not_inside_it(chat_run):
    from repytilian.cli.common import speak
    from repytilian.events import notes_to

    here, _ = chat_run
    questions = "".join(f"{q}\n" for q, _ in PERSONA * 3)
    shown = io.StringIO()
    with contextlib.redirect_stderr(shown), notes_to(speak):  # as the command runs it; a terminal shows both streams
        chat_loop(load_model(here / "chat"), 60, SamplingOptions(temperature=0),
                  stdin=io.StringIO(questions + "/quit\n"), stdout=shown)
    assert "oldest turns were left out" in shown.getvalue()
    assert "model> note:" not in shown.getvalue()  # it was written after "model> ", as if the model said it


def test_every_surface_uses_the_models_own_template(chat_run):
    here, _ = chat_run
    question, answer = PERSONA[0]
    for folder, typed, shown, form in (("chat", question, f"model> {answer}\n", "its own chat format"),
                                       ("base", "hello", "unknown characters ':', 'A'",  # the script's USER:
                                        "a script (USER: / ASSISTANT:)")):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err):  # `repytilian chat`'s loop, as the command runs it
            assert chat_loop(load_model(here / folder), 60, SamplingOptions(temperature=0),
                             stdin=io.StringIO(f"{typed}\n/quit\n"), stdout=out) == 0
        assert shown in out.getvalue() and form in err.getvalue()

    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from repytilian.serve.app import create_app
    from repytilian.serve.limits import Limits
    from repytilian.serve.registry import Registry

    with TestClient(create_app(Registry(root=here), Limits()), base_url="http://localhost:8000") as client:
        reply = client.post("/v1/chat/completions", json={
            "model": "chat", "temperature": 0, "messages": [{"role": "user", "content": question}]})
        assert reply.status_code == 200, reply.text
        choice = reply.json()["choices"][0]
        assert choice["message"]["content"] == answer and choice["finish_reason"] == "stop"
        listed = {m["id"]: m for m in client.get("/api/models").json()["models"]}
        summary = json.loads((here / "chat" / "config.json").read_text())["summary"]
        assert listed["chat"]["chat_format"] and not listed["base"]["chat_format"]
        base = json.loads((here / "base" / "config.json").read_text())["summary"]
        assert listed["base"]["bits_per_byte"] == round(base["val_bits_per_byte"], 4)  # the playground's list
        assert summary["val_bits_per_byte"] is None  # a chat fine-tune's loss is on answers only: no text scale


def test_the_hf_export_carries_the_template_and_transformers_answers_the_same(chat_run, tmp_path):
    transformers = pytest.importorskip("transformers")
    here, _ = chat_run
    r = run_script("export", "-m", str(here / "chat"), "--format", "hf", str(tmp_path / "hf"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    messages = [{"role": "system", "content": "you are rep."}, {"role": "user", "content": PERSONA[1][0]}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    lm = load_model(here / "chat")
    assert ids == lm.chat_prompt(messages)[0]
    out = model.generate(torch.tensor([ids]), max_new_tokens=40, do_sample=False)[0, len(ids):].tolist()
    assert out[-1] == lm.chat_format.end and tok.decode(out, skip_special_tokens=True) == PERSONA[1][1]


def test_conversations_from_parquet_read_as_from_jsonl(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    lines = persona_lines(8)
    (tmp_path / "a.jsonl").write_text("\n".join(lines))
    table = pa.table({"messages": [json.loads(line)["messages"] for line in lines]})
    pq.write_table(table, tmp_path / "a.parquet")
    from_jsonl, _ = read_conversations(tmp_path / "a.jsonl")
    from_parquet, _ = read_conversations(tmp_path / "a.parquet")
    assert [c.messages for c in from_jsonl] == [c.messages for c in from_parquet]
    assert from_parquet[2].where.endswith("a.parquet: row 3")


def test_the_other_forms_of_chat_data_read_as_the_messages_form(tmp_path):
    """ShareGPT's conversations (many Hugging Face chat sets), prompt/completion pairs (OpenAI's old
    fine-tuning files), Alpaca's instructions and a bare list of messages were each "expected
    {"messages": ...}": they are the same conversations, in JSONL and in Parquet."""
    ask, answer = "Who art thou?", "A humble servant."
    forms = {
        "messages": {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": ask},
                                  {"role": "assistant", "content": answer}]},
        "sharegpt": {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": ask},
                                       {"from": "gpt", "value": answer}]},
        "bare": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": ask},
                 {"role": "assistant", "content": answer}],
    }
    expected = [("system", "Be brief."), ("user", ask), ("assistant", answer)]
    for name, record in forms.items():
        (tmp_path / f"{name}.jsonl").write_text(json.dumps(record) + "\n")
        assert read_conversations(tmp_path / f"{name}.jsonl")[0][0].messages == expected, name
    pairs = [{"prompt": ask, "completion": answer}, {"instruction": "Answer.", "input": ask, "output": answer},
             {"instruction": ask, "input": "", "output": answer}]
    (tmp_path / "pairs.jsonl").write_text("\n".join(map(json.dumps, pairs)))
    read = [c.messages for c in read_conversations(tmp_path / "pairs.jsonl")[0]]
    assert read == [[("user", ask), ("assistant", answer)], [("user", f"Answer.\n\n{ask}"), ("assistant", answer)],
                    [("user", ask), ("assistant", answer)]]
    (tmp_path / "odd.jsonl").write_text(json.dumps({"conversations": [{"from": "bot", "value": answer}]}))
    with pytest.raises(RepytilianError, match="odd.jsonl: line 1: turn 1 is from 'bot'; ShareGPT's speakers are"):
        read_conversations(tmp_path / "odd.jsonl")
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"conversations": [forms["sharegpt"]["conversations"]], "id": [7]}), tmp_path / "s.parquet")
    assert read_conversations(tmp_path / "s.parquet")[0][0].messages == expected
    pq.write_table(pa.table({"instruction": ["Answer."], "input": [ask], "output": [answer]}), tmp_path / "a.parquet")
    assert read_conversations(tmp_path / "a.parquet")[0][0].messages == read[1]
    pq.write_table(pa.table({"question": [ask]}), tmp_path / "q.parquet")
    with pytest.raises(RepytilianError, match="has no 'messages' column, nor the columns of another form .* it has: question"):
        read_conversations(tmp_path / "q.parquet")


BAD = [
    ('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n{"messages": [',
     "line 2 is not JSON"),
    ('{"messages": [{"role": "wizard", "content": "hi"}, {"role": "assistant", "content": "yo"}]}',
     "line 1: message 1 has the role 'wizard'"),
    ('{"messages": [{"role": "user", "content": "hi"}]}', "line 1: the conversation has no assistant message"),
    ('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]}',
     "line 1: message 2 (assistant) has no content"),
    ('{"text": "hi"}', 'line 1: expected a conversation: {"messages"'),
]


@pytest.mark.parametrize("text,words", BAD)
def test_bad_conversations_are_one_clear_line_and_exit_2(chat_run, tmp_path, text, words):
    here, _ = chat_run
    good = persona_lines(4)
    (tmp_path / "bad.jsonl").write_text(text + "\n" + "\n".join(good) + "\n")
    r = run_script("training.py", "-l", str(here / "base"), "--chat", "bad.jsonl", "-m", "out", "-t", "0", cwd=tmp_path)
    assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert "bad.jsonl" in r.stderr and not (tmp_path / "out").exists()


def test_two_conversations_are_one_to_learn_and_one_to_validate_in_the_singular(chat_run, tmp_path):
    """Were "1 conversations to learn from" and "the answers of all 1 validation conversations"."""
    here, _ = chat_run
    (tmp_path / "two.jsonl").write_text("\n".join(persona_lines(2)) + "\n")
    r = run_script("training.py", "-l", str(here / "base"), "--chat", "two.jsonl", "-m", "out", "-t", "0", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "1 conversation to learn from" in r.stderr
    assert "val loss over the answers of the one validation conversation:" in r.stderr


def test_a_model_that_already_chats_refuses_characters_it_does_not_know(chat_run, tmp_path):
    """A first chat fine-tune takes the conversations' new characters (test_fine_tune_text); after it, the
    chat's special tokens own the ids after the vocabulary, so an unknown character is one clear line."""
    here, _ = chat_run
    strange = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "\u00e9t\u00e9"}]}'
    (tmp_path / "bad.jsonl").write_text(strange + "\n" + "\n".join(persona_lines(4)) + "\n")
    r = run_script("training.py", "-l", str(here / "chat"), "--chat", "bad.jsonl", "-m", "out", "-t", "0",
                   cwd=tmp_path)
    assert r.returncode == 2 and "bad.jsonl: line 1: unknown character" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize("args,words", [
    (["--chat", "c.jsonl", "-m", "out"], "--chat fine-tunes a model to chat: give the model folder to start from as -l"),
    (["--chat-val", "c.jsonl", "-m", "out"], "--chat-val goes with --chat"),
    (["--chat", "c.jsonl", "-d", "c.jsonl", "-m", "out"], "not both"),
    (["--chat", "nothing.jsonl", "-l", "BASE", "-m", "out"], "no such file or folder"),
    (["--chat", "long.jsonl", "-l", "BASE", "-m", "out"], "none of the training conversations has an answer within"),
    (["--chat", "c.jsonl", "-l", "MUSIC", "-m", "out"], "tokens are not text"),
    (["-d", "c.jsonl", "--lora", "4", "-m", "out"], "--lora fine-tunes a trained model: give the model folder as -l"),
])
def test_bad_chat_runs_are_one_clear_line(chat_run, tmp_path, args, words):
    here, _ = chat_run
    (tmp_path / "c.jsonl").write_text("\n".join(persona_lines(4)) + "\n")
    long = {"messages": [{"role": "user", "content": "the king " * 20}, {"role": "assistant", "content": "yes"}]}
    (tmp_path / "long.jsonl").write_text((json.dumps(long) + "\n") * 3)
    (tmp_path / "music.json").write_text(json.dumps([[1, 2, 3, 1] * 20] * 10))
    if "MUSIC" in args:
        made = run_script("training.py", "-z", "json", "-d", "music.json", "-m", "music", "--iters", "2", "-t", "0",
                          "--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--block-size", "8", cwd=tmp_path)
        assert made.returncode == 0, made.stderr
    args = [str(here / "base") if a == "BASE" else "music" if a == "MUSIC" else a for a in args]
    r = run_script("training.py", *args, "-t", "0", cwd=tmp_path)
    assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_a_conversation_longer_than_the_context_is_cut_with_a_note(chat_run, tmp_path):
    here, _ = chat_run
    long = {"messages": [{"role": "user", "content": "who are you?"}, {"role": "assistant", "content": "the king " * 10}]}
    (tmp_path / "c.jsonl").write_text("\n".join([json.dumps(long)] * 2 + persona_lines(20)) + "\n")
    r = run_script("training.py", "-l", str(here / "base"), "--chat", "c.jsonl", "-m", "out", "--iters", "2", "-t", "0",
                   cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "2 of the 20 training conversations are longer than the context of 64 tokens (the longest has 106)" \
        in r.stderr


@pytest.mark.slow
def test_the_playgrounds_chat_tab_talks_in_the_models_format_in_a_real_browser(chat_run):
    """A real server, Debian's headless Chromium: the Chat tab says which format it uses, streams each
    answer into the conversation, and keeps the turns for the next question."""
    from playwright.sync_api import expect
    from test_serve import ARTIFACTS, RealServer, browser_page

    here, _ = chat_run
    server = RealServer(here)
    try:
        with browser_page() as page:
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server.url + "/")
            page.select_option("#model", "chat")
            page.fill("#temperature", "0")  # the Generate tab's settings are the chat's
            page.click("#tab-chat")
            expect(page.locator("#chat-note")).to_contain_text("was fine-tuned to chat")
            sent = []
            page.on("request", lambda r: sent.append(json.loads(r.post_data)) if r.url.endswith("/completions") else 0)
            question, answer = PERSONA[0]
            page.fill("#chat-input", question)
            page.press("#chat-input", "Enter")
            expect(page.locator(".chat-log .assistant .said").first).to_have_text(answer)
            expect(page.locator("#chat-send")).to_be_enabled()
            page.fill("#chat-input", PERSONA[1][0])  # the next question comes with the turns before it
            page.click("#chat-send")
            expect(page.locator("#chat-send")).to_be_enabled()
            expect(page.locator(".chat-log .turn")).to_have_count(4)
            assert [m["content"] for m in sent[1]["messages"]] == [question, answer, PERSONA[1][0]]
            assert sent[1]["temperature"] == 0 and sent[1]["stream"] is True
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "playground-chat.png"))
            page.select_option("#model", "base")  # a new model, a new conversation, in a script
            expect(page.locator(".chat-log .turn")).to_have_count(0)
            expect(page.locator("#chat-note")).to_contain_text("as a script (USER: / ASSISTANT:)")
            assert errors == []
    finally:
        server.stop()


def test_lora_trains_low_rank_adapters_and_saves_an_ordinary_model(chat_run, tmp_path):
    here, _ = chat_run
    r = run_script("training.py", "-l", str(here / "base"), "--chat", str(here / "chats.jsonl"), "-m", "lora",
                   "--lora", "4", "-t", "0", "--seed", "1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "LoRA of rank 4: training 10,368 of 106,368 parameters" in r.stderr
    lora, full, base = (load_model(p).model.state_dict() for p in (tmp_path / "lora", here / "chat", here / "base"))
    assert lora.keys() == full.keys()  # the plain model's weights, adapters merged
    assert torch.equal(lora["transformer.h.0.ln_1.weight"], base["transformer.h.0.ln_1.weight"])  # frozen
    change = lora["transformer.h.1.mlp.c_fc.weight"] - base["transformer.h.1.mlp.c_fc.weight"]
    assert 0 < torch.linalg.matrix_rank(change, rtol=1e-4) <= 4  # a rank-4 step away from the base
    assert load_model(tmp_path / "lora").chat([("user", PERSONA[0][0])], 60, temperature=0) == PERSONA[0][1]
    assert json.loads((tmp_path / "lora" / "config.json").read_text())["lora"] == {"rank": 4}


def test_a_lora_models_function_is_its_merged_weights():
    from repytilian.lora import add_lora, merge_lora
    from repytilian.model import GPT, ModelConfig

    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16)).eval()
    add_lora(model, 2)
    for name, p in model.named_parameters():
        if name.endswith(".b"):
            p.data.normal_()  # away from the zero start, so every adapter counts
    x = torch.randint(11, (2, 8))
    adapted = model(x)[0]
    merge_lora(model)
    assert torch.allclose(model(x)[0], adapted, atol=1e-5)


@pytest.fixture(scope="module")
def bpe_chat(chat_run):
    """The same fine-tune from a byte-level BPE base in the Llama layout (what llama.cpp runs)."""
    pytest.importorskip("tokenizers")
    here, _ = chat_run
    shape = ["--n-layer", "2", "--n-head", "2", "--n-embd", "64", "--block-size", "64", "--batch-size", "16",
             "--set", "eval_iters=2", "--set", "warmup_iters=10", "--eval-interval", "50"]
    r = run_script("training.py", "-d", "base.txt", "-z", "bpe", "--vocab-size", "300", "--arch", "modern",
                   "-m", "bpe-base", "--iters", "200", "-t", "0", "--seed", "1", *shape, cwd=here)
    assert r.returncode == 0, r.stderr
    r = run_script("training.py", "-l", "bpe-base", "--chat", "chats.jsonl", "-m", "bpe-chat", "-t", "0",
                   "--seed", "1", cwd=here)
    assert r.returncode == 0, r.stderr
    return here / "bpe-chat"


def test_a_bpe_models_chat_tokens_are_real_special_tokens_in_hf_and_in_gguf(bpe_chat, tmp_path):
    lm = load_model(bpe_chat)
    chat, question = lm.chat_format, PERSONA[0][0]
    added = {t["content"]: t for t in json.loads((bpe_chat / "tokenizer.json").read_text())["added_tokens"]}
    assert added["<|end|>"]["id"] == chat.end and added["<|end|>"]["special"]
    answer = [e.id for e in lm.chat_events([("user", question)], 40, temperature=0) if hasattr(e, "id")]
    assert lm.tokenizer.decode(answer) == PERSONA[0][1]

    gguf = pytest.importorskip("gguf")
    from repytilian.interop.gguf_export import export_gguf

    path = export_gguf(lm.model, lm.tokenizer, tmp_path / "chat.gguf")
    reader = gguf.GGUFReader(str(path))

    def field(name):
        f = reader.fields[name]
        return f.contents() if hasattr(f, "contents") else bytes(f.parts[f.data[0]]).decode()

    assert field("tokenizer.chat_template") == TEMPLATE and field("tokenizer.ggml.eos_token_id") == chat.end
    llama_cpp_answers_as_we_do(path, lm, question)


def llama_cpp_answers_as_we_do(path, lm, question: str) -> None:
    """llama.cpp reads the chat tokens of the rendered template and answers greedily as we do."""
    llama_cpp = pytest.importorskip("llama_cpp")
    chat, ids = lm.chat_format, lm.chat_prompt([("user", question)])[0]
    answer = [e.id for e in lm.chat_events([("user", question)], 40, temperature=0) if hasattr(e, "id")]
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, logits_all=True, verbose=False)
    rendered = f"<|user|>{question}<|end|><|assistant|>"  # the template's text, which llama.cpp parses
    assert llm.tokenize(rendered.encode(), add_bos=False, special=True) == ids
    assert llm.tokenize(b"<|end|>", add_bos=False, special=False) != [chat.end]  # typed text stays text
    llm.eval(ids)
    theirs = []
    while len(theirs) < 40:
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        theirs.append(token)
        if token == llm.token_eos():
            break
        llm.eval([token])
    assert theirs == answer + [chat.end]  # the same answer, ended at the end of its turn


def test_a_character_chat_model_runs_in_llama_cpp_with_its_chat_tokens(chat_run, tmp_path):
    gguf = pytest.importorskip("gguf")
    from repytilian.interop.gguf_export import export_gguf

    here, _ = chat_run
    lm = load_model(here / "chat")
    path = export_gguf(lm.model, lm.tokenizer, tmp_path / "chat.gguf")
    reader = gguf.GGUFReader(str(path))
    assert bytes(reader.fields["tokenizer.ggml.model"].parts[-1]).decode() == "t5"  # llama.cpp's unigram
    llama_cpp_answers_as_we_do(path, lm, PERSONA[0][0])


def test_a_conversation_longer_than_the_context_loses_its_oldest_turns_not_its_system_message(chat_run):
    from repytilian.events import notes_to

    here, _ = chat_run
    lm = load_model(here / "chat")
    turns = [("system", "you are rep.")] + [t for q, a in PERSONA for t in (("user", q), ("assistant", a))]
    turns.append(("user", PERSONA[0][0]))
    said = []
    with notes_to(said.append):
        ids, stops = lm.chat_prompt(turns)
    chat = lm.chat_format
    assert len(ids) <= 64 and ids[0] == chat.ids["system"] and ids[-1] == chat.ids["assistant"] and stops == []
    kept = ids.count(chat.ids["user"]) + ids.count(chat.ids["assistant"]) - 1  # the prompt's own token aside
    assert kept < len(turns) - 1 and ids[1: 1 + len("you are rep.")] == lm.tokenizer.encode("you are rep.")
    assert any(f"its {len(turns) - 1 - kept} oldest turns were left out" in n.text for n in said)


@pytest.mark.parametrize("messages", ["Good morrow!", {"role": "user", "content": "Good morrow!"}, ["Good morrow!"],
                                      [("user", "Good", "morrow")]])
def test_messages_of_the_wrong_shape_are_named(messages):
    """lm.chat("Good morrow!") was "ValueError: not enough values to unpack (expected 2, got 1)"."""
    from repytilian.chat_format import turns_of
    from repytilian.errors import RepytilianError

    with pytest.raises(RepytilianError, match=r"the messages are a list|message 1: a role"):
        turns_of(messages)
