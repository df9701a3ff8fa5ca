"""The server's threads: each model decodes in its batch loop on the threads the server started
with; loading and inspection run in a thread that ends with its work. An OpenMP team kept by any
other thread beside the batch loop's made every decoding step wake its workers from sleep (a lone
request 4x slower: serve/admission.py)."""
import asyncio
import threading
import time

import pytest
import torch
from conftest import tiny_language_model

from repytilian.serve.admission import Server
from repytilian.serve.registry import Registry


def test_work_runs_one_job_at_a_time_each_in_a_thread_that_ends_with_it(tmp_path):
    server = Server(Registry(root=tmp_path))
    ran, active, most = [], [0], [0]
    lock = threading.Lock()

    def job(x: int) -> int:
        with lock:
            ran.append(threading.current_thread())
            active[0] += 1
            most[0] = max(most[0], active[0])
        time.sleep(0.05)
        with lock:
            active[0] -= 1
        return 2 * x

    def failing() -> None:
        raise ValueError("a load that fails")

    async def requests() -> list[int]:
        with pytest.raises(ValueError, match="a load that fails"):
            await server.work(failing)
        gone = asyncio.create_task(server.work(job, 10))  # its request stops waiting: the job goes on
        await asyncio.sleep(0.01)
        gone.cancel()
        return await asyncio.gather(*(server.work(job, i) for i in range(3)))

    assert asyncio.run(requests()) == [0, 2, 4]
    assert most[0] == 1 and len(ran) == 4  # one at a time, as the loads' single worker thread did
    for thread in ran:
        thread.join(5)
        assert not thread.is_alive() and thread is not threading.main_thread()


def test_a_lone_request_decodes_on_the_threads_the_server_started_with(tmp_path):
    """`repytilian serve` has its event loop's thread compute on one thread once the server is made;
    the batch loop keeps the process's threads (a lone request) and one core fewer (several)."""
    from repytilian.runtime.cpu import threads_beside_a_server

    seen = {}

    def event_loop_thread() -> None:  # a thread of its own: the test's keeps its thread count
        torch.set_num_threads(2)
        seen["expected"] = {"threads": 2, "busy": threads_beside_a_server(), "lanes": 1}  # eager: one lane
        server = Server(Registry(root=tmp_path))
        torch.set_num_threads(1)  # as cli/serve.py does after making the server
        loop = server.loop(tiny_language_model())
        seen["loop"] = {"threads": loop.threads, "busy": loop.busy_threads, "lanes": len(loop.loops)}
        loop.close()

    thread = threading.Thread(target=event_loop_thread)
    thread.start()
    thread.join(60)
    assert seen["loop"] == seen["expected"]


def test_a_models_lanes_are_made_once_and_off_the_event_loop(tmp_path, monkeypatch):
    """Finding whether a model's batches decode in C may make a decoder (tens of milliseconds): a
    worker thread does it, once, however many of the model's first requests come at once."""
    from repytilian.engine import Request, Token
    from repytilian.sampling import SamplingOptions
    from repytilian.serve import admission

    server, lm, seen = Server(Registry(root=tmp_path)), tiny_language_model(), []
    real = admission.steps_in_c

    def recording(engine):
        try:
            asyncio.get_running_loop()
            seen.append("the event loop")
        except RuntimeError:
            seen.append("a worker thread")
        time.sleep(0.05)  # while the other requests ask for the lanes too
        return real(engine)
    monkeypatch.setattr(admission, "steps_in_c", recording)

    async def ask(i: int) -> list:
        await server.gate.enter()
        gone = asyncio.get_running_loop().create_future()  # the client stays
        request = Request(lm.encode_prompt("the"), 5, SamplingOptions(seed=i))
        return [item async for item in server._run(lm, request, threading.Event(), gone)]

    async def first_requests() -> list:
        return await asyncio.gather(*(ask(i) for i in range(4)))
    answers = asyncio.run(first_requests())
    server.loop(lm).close()
    assert seen == ["a worker thread"]
    assert all(sum(isinstance(item, Token) for item in answer) == 5 for answer in answers)
