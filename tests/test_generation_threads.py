"""Generating from a thread of the caller's own (a web app's worker): one OpenMP thread there, since
a second OpenMP team beside the main thread's makes every decoding step wake sleeping workers
(runtime/cpu.one_thread_off_the_main_thread); the main thread and a thread count the user chose
are left as they are."""
import os
import threading

import pytest
import torch
from conftest import tiny_language_model

from repytilian import engine as engine_module


@pytest.fixture
def threads_seen(monkeypatch):
    """The thread count each decoding step of the engine ran with."""
    seen: list[int] = []
    step = engine_module.Engine.step

    def counting(self, batch):
        seen.append(torch.get_num_threads())
        return step(self, batch)

    monkeypatch.setattr(engine_module.Engine, "step", counting)
    return seen


def _in_a_thread(fn, threads: int):
    """fn() in a new thread that computes on `threads` threads; what it returned, and its count after."""
    out = {}

    def run():
        torch.set_num_threads(threads)
        out["text"] = fn()
        out["after"] = torch.get_num_threads()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(60)
    return out


def test_a_thread_of_ones_own_decodes_on_one_thread_and_gets_the_same_text(threads_seen, monkeypatch):
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    lm = tiny_language_model()
    default = len(os.sched_getaffinity(0))  # OpenMP's count for a new thread
    text = lm.generate("the cat", 20, temperature=0)
    threads_seen.clear()
    out = _in_a_thread(lambda: lm.generate("the cat", 20, temperature=0), default)
    assert out["text"] == text
    if default > 1:
        assert set(threads_seen) == {1} and out["after"] == default  # given back after
    threads_seen.clear()
    out = _in_a_thread(lambda: lm.generate("the cat", 5, temperature=0), 3 if default != 3 else 2)
    assert set(threads_seen) == {out["after"]} != {1}  # a count this thread chose stays


def test_a_count_the_user_chose_for_the_process_is_left_alone(threads_seen, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", str(len(os.sched_getaffinity(0))))
    lm = tiny_language_model()
    threads_seen.clear()
    out = _in_a_thread(lambda: lm.generate("a dog", 5, temperature=0), len(os.sched_getaffinity(0)))
    assert set(threads_seen) == {out["after"]}
