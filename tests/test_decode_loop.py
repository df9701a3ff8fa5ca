"""The decoding loop's choice of each token (decode_loop.c): sampling.py's, for the same waiting
times; and a loop that cannot be built leaves a note and decoding a token at a time."""
from __future__ import annotations

import pytest
import torch

from repytilian import decode_loop
from repytilian.errors import RepytilianError
from repytilian.events import notes_to
from repytilian.sampling import SamplingOptions, first_arrival, probabilities


@pytest.fixture(scope="module", autouse=True)
def library():
    if decode_loop._library() is None:
        pytest.skip("decode_loop.c could not be built here (no C compiler)")


def test_it_chooses_what_sampling_chooses_for_the_same_waiting_times():
    """Random logits, temperatures, top-k (off, below and above the vocabulary), top-p and ids
    never chosen: the same id as sampling.py's exponential race, torch's argmax when greedy, and
    the log-probability of the logits as given."""
    g = torch.Generator().manual_seed(0)
    for trial in range(400):
        vocab = int(torch.randint(2, 300, (1,), generator=g))
        logits = torch.randn(vocab, generator=g) * float(torch.rand(1, generator=g) * 5)
        options = SamplingOptions(temperature=0.05 + 2 * float(torch.rand(1, generator=g)),
                                  top_k=int(torch.randint(0, vocab + 5, (1,), generator=g)),
                                  top_p=0.05 + 0.95 * float(torch.rand(1, generator=g)) if trial % 2 else 1.0)
        noise = torch.empty(vocab).exponential_(generator=g)
        never, row = None, logits
        if trial % 3 == 0:
            never = torch.zeros(vocab, dtype=torch.uint8)
            never[torch.randint(0, vocab, (3,), generator=g)] = 1
            if never.all():
                continue
            row = logits.masked_fill(never.bool(), float("-inf"))
        expected = int(first_arrival(probabilities(row[None], options), noise.clone()[None])[0])
        chosen, logprob = decode_loop.choose(logits, options, noise, never)
        assert chosen == expected, (trial, options)
        assert logprob == pytest.approx(float(row.log_softmax(-1)[chosen]), abs=1e-4)
        assert decode_loop.choose(logits, SamplingOptions(temperature=0), None, never)[0] == int(row.argmax())


def test_nan_logits_are_refused_when_sampling_and_chosen_as_argmax_does_when_greedy():
    logits = torch.tensor([0.5, float("nan"), 2.0, float("nan")])
    with pytest.raises(RepytilianError, match="invalid probabilities"):
        decode_loop.choose(logits, SamplingOptions(temperature=1.0), torch.ones(4))
    with pytest.raises(RepytilianError, match="invalid probabilities"):
        decode_loop.choose(torch.tensor([0.0, float("inf")]), SamplingOptions(temperature=1.0), torch.ones(2))
    assert decode_loop.choose(logits, SamplingOptions(temperature=0))[0] == int(logits.argmax()) == 1


def test_a_loop_that_cannot_be_built_says_so_once_and_none_is_used(tmp_path, monkeypatch):
    monkeypatch.setenv("REPYTILIAN_HOME", str(tmp_path))
    monkeypatch.setenv("CC", "/bin/false")
    monkeypatch.setattr(decode_loop, "_lib", None)
    monkeypatch.setattr(decode_loop, "_tried", False)
    notes = []
    with notes_to(notes.append):
        assert decode_loop.TokenLoop.make(tmp_path / "step.so", 10) is None
        assert decode_loop.TokenLoop.make(tmp_path / "step.so", 10) is None
    assert len(notes) == 1 and "decoding loop could not be built" in notes[0].text
    assert "a token at a time" in notes[0].text


def test_its_own_waiting_times_draw_tokens_as_often_as_their_probabilities():
    """Without waiting times given, it draws its own (for the tokens top-k and top-p leave in):
    20,000 draws land on each token as often as sampling.probabilities says, within 0.015."""
    logits = torch.tensor([1.0, 0.2, -0.5, 2.0, 0.0, -3.0])
    for options in (SamplingOptions(temperature=1.0, top_k=0), SamplingOptions(temperature=0.7, top_k=3),
                    SamplingOptions(temperature=1.3, top_k=0, top_p=0.8)):
        expected = probabilities(logits[None], options)[0]
        expected = expected / expected.sum()  # top-p leaves the rest as they were
        counts = torch.zeros(len(logits))
        for seed in range(20_000):
            counts[decode_loop.choose(logits, options, seed=seed)[0]] += 1
        assert torch.allclose(counts / counts.sum(), expected, atol=0.015), (options, counts / counts.sum(), expected)
        assert counts[expected == 0].sum() == 0


@pytest.mark.parametrize("fails", ["a new handle", "the span's tensor"])
def test_a_step_that_fails_before_the_library_runs_releases_the_handles_it_made(fails):
    """decode_steps makes a handle of each input for the library, which takes them over when it
    runs; a failure before that (torch's C interface refusing one) used to leave them unreleased."""
    import ctypes

    lib, made, released = decode_loop._library(), [], []
    status, p = ctypes.c_int32, ctypes.c_void_p

    @ctypes.CFUNCTYPE(status, p, ctypes.POINTER(p))
    def new_handle(orig, fresh):
        if fails == "a new handle" and len(made) == 2:
            return 1
        made.append(orig)
        fresh[0] = orig
        return 0

    @ctypes.CFUNCTYPE(status, p, ctypes.c_int64, p, p, ctypes.c_int64, ctypes.c_int32, ctypes.c_int32,
                      ctypes.c_int32, ctypes.POINTER(p))
    def from_blob(*args):
        return 1  # reached only where every input's handle was made

    @ctypes.CFUNCTYPE(status, p)
    def release(handle):
        released.append(handle)
        return 0
    never_called = ctypes.cast(release, p).value  # data_ptr and run are never reached here
    calls = decode_loop._Torch(ctypes.cast(new_handle, p).value, ctypes.cast(from_blob, p).value, never_called,
                               ctypes.cast(release, p).value, never_called, None, 0, 0)
    inputs = (p * 4)(11, 12, 13, 14)
    tokens, positions, span = torch.zeros(1, dtype=torch.int64), torch.zeros(1, dtype=torch.int64), torch.zeros(8)
    ids, chances = torch.zeros(1, dtype=torch.int64), torch.zeros(1)
    choices = decode_loop._choices([SamplingOptions(temperature=0)], [None], None, False)
    result = lib.decode_steps(ctypes.byref(calls), inputs, 4, 1, tokens.data_ptr(), positions.data_ptr(),
                              span.data_ptr(), 2, 8, 5, 1, -1, choices, ids.data_ptr(), chances.data_ptr())
    assert result == -1  # the built decoding step failed
    assert made == ([11, 12] if fails == "a new handle" else [11, 12, 13, 14])
    assert released == made
