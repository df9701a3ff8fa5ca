"""Continuous batching: sequences of different lengths in one batch, requests that join and leave a
running batch, and the same text for a seeded request alone or among others (batching.py,
engine.py, batch_loop.py)."""
import threading

import pytest
import torch
from conftest import TINY_TEXT, tiny_language_model

from repytilian.batch_loop import BatchLoop, Lanes
from repytilian.decode import Decoder
from repytilian.engine import LENGTH, STOP, Ended, Request, Token
from repytilian.language_model import LanguageModel
from repytilian.model import GPT, ModelConfig
from repytilian.sampling import SamplingOptions

TEXT = TINY_TEXT


@pytest.fixture(scope="module")
def lm() -> LanguageModel:
    return tiny_language_model(n_layer=2)


@pytest.mark.parametrize("arch", [dict(), dict(position="rope", norm="rmsnorm", activation="swiglu")])
def test_rows_of_different_lengths_each_get_their_own_positions_and_past(arch):
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=16, **arch)).eval()
    seqs = [torch.randint(11, (n,)) for n in (3, 8, 12)]
    decoder = Decoder(model, 3)
    for row, seq in enumerate(seqs):  # each row's prefix, alone, then one step for all rows at once
        decoder.forward(seq[None, :-2], row)
    assert decoder.cache.lengths == [1, 6, 10]
    steps = [decoder.forward(torch.stack([s[-2:-1] for s in seqs])), decoder.forward(torch.stack([s[-1:] for s in seqs]))]
    for row, seq in enumerate(seqs):
        full, _ = model(seq[None])
        assert torch.allclose(torch.stack([steps[0][row], steps[1][row]]), full[0, -2:], atol=1e-5)
    chunk = decoder.forward(torch.zeros(3, 2, dtype=torch.long))  # two tokens per row, still each at its own place
    for row, seq in enumerate(seqs):
        assert torch.allclose(chunk[row], model(torch.cat([seq, torch.zeros(2, dtype=torch.long)])[None])[0][0, -1],
                              atol=1e-5)


def alone(lm, requests) -> list[list[str]]:
    """Each request's texts, each run on its own."""
    return [_texts(((0, e) for e in lm.engine.run(r)), 1, r.num_samples)[0][0] for r in requests]


def _texts(pairs, n_requests, n_samples):
    texts = [[""] * n_samples for _ in range(n_requests)]
    ended = {}
    for index, event in pairs:
        if isinstance(event, (Token, Ended)):
            texts[index][event.sample] += event.text
        if isinstance(event, Ended):
            ended[(index, event.sample)] = event.reason
    return texts, ended


def mixed_requests(lm):
    """Different prompts, lengths, sampling, stops and samples; windows that fill and slide."""
    return [Request(lm.encode_prompt("the cat"), 30, SamplingOptions(seed=1, temperature=1.0), num_samples=2),
            Request(lm.encode_prompt("a"), 7, SamplingOptions(temperature=0)),
            Request(lm.encode_prompt("on the mat. a dog"), 40, SamplingOptions(seed=7, top_k=5, top_p=0.9)),
            Request(lm.encode_prompt("dog"), 25, SamplingOptions(seed=3, temperature=1.5), stop=["t"]),
            Request(lm.encode_prompt("the mat"), 20, SamplingOptions(seed=2, temperature=1.0))]  # samples as the first


def test_a_seeded_request_gives_the_same_text_alone_or_in_a_batch(lm):
    requests = mixed_requests(lm)
    together, ended = _texts(lm.engine.run_many(requests), len(requests), 2)
    assert [t[: r.num_samples] for t, r in zip(together, requests)] == alone(lm, mixed_requests(lm))
    assert ended[(1, 0)] == LENGTH and ended[(3, 0)] in (STOP, LENGTH)


def test_requests_that_join_a_running_batch_get_the_text_they_get_alone(lm):
    requests = mixed_requests(lm)
    texts = [[""] * r.num_samples for r in requests]
    sizes = []
    with lm.engine.batch() as batch:
        jobs = {}
        for step in range(200):
            if step % 3 == 0 and step // 3 < len(requests):  # one joins every third step
                job, events = lm.engine.start(batch, requests[step // 3], step // 3)
                jobs[job] = events
                for e in events:
                    texts[job.index][e.sample] += e.text
            if not batch:
                break
            for job, e in lm.engine.step(batch):
                if isinstance(e, (Token, Ended)):
                    texts[job.index][e.sample] += e.text
            sizes.append(len(batch))
    assert texts == alone(lm, mixed_requests(lm))
    assert max(sizes) > 2 and sizes[-1] == 0  # they overlapped, and every row left when done


def test_python_users_generate_for_a_list_of_prompts_in_one_batch(lm):
    prompts = ["the cat", "a", "dog ran"]
    together = lm.generate(prompts, 20, seed=4)
    assert together == [lm.generate(p, 20, seed=4) for p in prompts]
    assert all(isinstance(t, str) and t for t in together)


def from_many_threads(loop, requests) -> list:
    """Each request's texts (or the exception that ended it), submitted to `loop` from a thread each."""
    results: list = [None] * len(requests)

    def client(i: int) -> None:
        done, texts = threading.Event(), [""] * requests[i].num_samples

        def sink(item):
            if item is None or isinstance(item, BaseException):
                results[i] = item if item is not None else texts
                done.set()
            elif isinstance(item, (Token, Ended)):
                texts[item.sample] += item.text
        loop.submit(requests[i], sink)
        assert done.wait(60)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    return results


def test_the_batch_loop_runs_requests_from_many_threads_at_once(lm):
    loop = BatchLoop(lm.engine, max_rows=3)  # fewer rows than samples asked for: some wait for a row
    results = from_many_threads(loop, mixed_requests(lm) * 2)
    loop.close()
    assert not loop._thread.is_alive()  # done, not still freeing its batch: at exit that aborts the process
    assert results == alone(lm, mixed_requests(lm) * 2)
    assert loop.load == 0


def test_lanes_share_requests_out_and_each_gives_the_text_it_gives_alone(lm):
    lanes = Lanes(lm.engine, lanes=2, max_rows=6)
    assert [loop.max_rows for loop in lanes.loops] == [3, 3]  # the model's rows, shared out
    results = from_many_threads(lanes, mixed_requests(lm) * 2)
    lanes.close()
    assert results == alone(lm, mixed_requests(lm) * 2)
    assert all(loop.most_rows > 0 and not loop._thread.is_alive() for loop in lanes.loops)  # both had work
    assert lanes.most_rows >= max(loop.most_rows for loop in lanes.loops) and lanes.load() == 0


def test_a_bad_request_fails_alone_in_the_batch_loop(lm):
    loop = BatchLoop(lm.engine)
    got: dict = {}
    done = threading.Event()
    loop.submit(Request([]), lambda item: (got.setdefault("bad", item), done.set()))
    assert done.wait(30) and isinstance(got["bad"], Exception) and "prompt_ids" in str(got["bad"])
    fine = threading.Event()
    loop.submit(Request(lm.encode_prompt("a"), 3), lambda item: fine.set() if item is None else None)
    assert fine.wait(30)
    loop.close()


def test_a_compile_that_fails_is_one_note_and_decoding_goes_on(lm, monkeypatch):
    from repytilian import decode_compiled
    from repytilian.events import notes_to

    def fails(*args, **kwargs):
        raise RuntimeError("no C++ compiler here\nmore detail")
    monkeypatch.setattr(decode_compiled, "build", fails)
    expected = lm.generate("the cat", 20, temperature=0)
    fresh = LanguageModel(lm.model, lm.tokenizer)
    fresh.engine.compile = True
    notes = []
    with notes_to(notes.append):
        assert fresh.generate("the cat", 20, temperature=0) == expected
        assert fresh.generate("the cat", 20, temperature=0) == expected  # no second attempt, no second note
    assert [n.text for n in notes] == ["compiling the decoding step for this model: about half a minute the first "
                                       f"time, kept for later runs in {decode_compiled.cache_dir() / 'decoding-steps'}",
                                       "note: the decoding step could not be compiled (RuntimeError: no C++ compiler "
                                       "here); decoding without compiling"]


def test_requests_that_join_at_once_with_prompts_of_one_length_are_prefilled_in_one_call(lm, monkeypatch):
    requests = [Request(lm.encode_prompt(p), 30, SamplingOptions(seed=i)) for i, p in
                enumerate(["the cat", "the mat", "a dog r"])]
    expected = alone(lm, [Request(r.prompt_ids, 30, SamplingOptions(seed=i)) for i, r in enumerate(requests)])
    calls = []
    forward = Decoder.forward
    monkeypatch.setattr(Decoder, "forward", lambda self, idx, first=0: calls.append(tuple(idx.shape)) or
                        forward(self, idx, first))
    texts, _ = _texts(lm.engine.run_many(requests), 3, 1)
    assert texts == expected
    assert calls[0] == (3, 6)  # the three prompts but their last tokens, together


@pytest.fixture
def two_threads():
    """A process of two threads at least (make test's workers compute on one each: conftest.py)."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(2, before))
    yield
    torch.set_num_threads(before)


def test_the_batch_loop_decodes_several_requests_with_its_busy_thread_count_and_one_with_all(lm, two_threads):
    loop = BatchLoop(lm.engine, busy_threads=1)
    seen = {"long": [], "short": []}
    done = {"long": threading.Event(), "short": threading.Event()}

    def sink_for(name):
        def sink(item):
            if isinstance(item, Token):
                seen[name].append(torch.get_num_threads())  # called on the loop's thread, after each step
            if item is None:
                done[name].set()
        return sink
    loop.submit(Request(lm.encode_prompt("the"), 40, SamplingOptions(seed=1)), sink_for("long"))
    loop.submit(Request(lm.encode_prompt("a"), 5, SamplingOptions(seed=2)), sink_for("short"))
    assert done["long"].wait(60) and done["short"].wait(60)
    loop.close()
    assert 1 in seen["long"] and seen["short"] and set(seen["short"]) == {1}
    assert seen["long"][-1] == loop.threads == torch.get_num_threads()  # alone again: all of them


def test_a_server_leaves_a_core_to_its_event_loop_unless_told(monkeypatch):
    from repytilian.runtime import cpu

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.setattr(cpu, "physical_cores", lambda: 4)
    assert cpu.threads_beside_a_server() == max(1, min(torch.get_num_threads(), 3))
    monkeypatch.setattr(cpu, "physical_cores", lambda: 1)
    assert cpu.threads_beside_a_server() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert cpu.threads_beside_a_server() == torch.get_num_threads()


def test_lanes_decode_on_their_share_of_the_busy_threads_and_a_lone_sample_on_all(lm, two_threads):
    lanes = Lanes(lm.engine, lanes=2, busy_threads=2, threads=2)
    assert lanes.busy_threads == 1
    seen: dict = {"long": [], "short": []}
    long_started, short_submitted, shared = threading.Event(), threading.Event(), threading.Event()
    done = {"long": threading.Event(), "short": threading.Event()}

    def long_sink(item):  # on the lane's own thread: waiting here holds that lane still
        if isinstance(item, Token):
            seen["long"].append(torch.get_num_threads())
            if not long_started.is_set():
                long_started.set()
                assert short_submitted.wait(30)
            if seen["long"][-1] == 1:
                shared.set()
        if item is None:
            done["long"].set()

    def short_sink(item):
        if isinstance(item, Token):
            seen["short"].append(torch.get_num_threads())
            assert shared.wait(30)  # the long request steps while this one is in the other lane
        if item is None:
            done["short"].set()
    lanes.submit(Request(lm.encode_prompt("the"), 200, SamplingOptions(seed=1)), long_sink)
    assert long_started.wait(30)
    lanes.submit(Request(lm.encode_prompt("a"), 5, SamplingOptions(seed=2)), short_sink)
    short_submitted.set()
    assert done["long"].wait(60) and done["short"].wait(60)
    lanes.close()
    assert [loop.most_rows for loop in lanes.loops] == [1, 1] and lanes.most_rows == 2  # a request a lane
    assert seen["long"][0] == 2  # alone at first: all the threads
    assert set(seen["short"]) == {1} and 1 in seen["long"]  # both on one thread while both decoded
    assert seen["long"][-1] == 2  # alone again: all of them


def test_a_lane_waits_while_another_computes_on_all_the_threads(lm):
    lanes = Lanes(lm.engine, lanes=2, busy_threads=2, threads=2)
    first, second = lanes.loops
    order: list = []

    def second_turn():
        with lanes.turn(second) as threads:
            order.append(("second", threads))
    first.load = 1  # a sample alone in the lanes: its turn is on both threads
    with lanes.turn(first) as threads:
        assert threads == 2
        second.load = 1  # a request comes to the other lane meanwhile
        other = threading.Thread(target=second_turn)
        other.start()
        other.join(0.3)
        order.append("first's turn ends")
    other.join(10)
    assert order == ["first's turn ends", ("second", 1)]  # never two teams on the two cores at once
    with lanes.turn(first) as threads:
        assert threads == 1  # two samples in the lanes now: each its share
