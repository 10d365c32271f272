"""Continuous batching: a request's sample does not depend on its batch, its arrival time or
its slot; queued requests all run; abort; bad requests are refused."""

from __future__ import annotations

import numpy as np
import pytest

from streamrl.hooks.generation import GenerationRequest, SamplingParams, seed_from_request_id
from tests.engine.engine_util import assert_same_output, engine, request, run_to_end
from tests.models.tiny import Tiny

PARAMS = [
    dict(temperature=1.0),
    dict(temperature=0.7, top_k=20),
    dict(temperature=1.3, top_p=0.8),
    dict(temperature=0.0),
]


def mixed_requests(num: int) -> list[GenerationRequest]:
    return [
        request(f"q{i}", length=3 + 2 * i, max_new_tokens=6 + 3 * (i % 4), **PARAMS[i % 4])
        for i in range(num)
    ]


def test_sample_is_the_same_alone_batched_queued_or_joining_mid_flight(tiny: Tiny) -> None:
    requests = mixed_requests(6)
    solo = engine(tiny.path, max_batch_size=1)
    alone = [solo.generate([r])[0] for r in requests]

    # All at once: 6 requests on 4 slots, so two wait in the queue and take freed slots.
    batched = engine(tiny.path, max_batch_size=4).generate(requests)
    # Reverse arrival order, and half of them added while the others are mid-generation.
    eng = engine(tiny.path, max_batch_size=3)
    late, early = requests[:3], requests[3:][::-1]
    for r in early:
        eng.add_request(r)
    results = [*eng.step(), *eng.step(), *eng.step()]
    for r in late:
        eng.add_request(r)
    joined = {r.request_id: r for r in [*results, *run_to_end(eng)]}

    for ref, b in zip(alone, batched, strict=True):
        assert_same_output(ref, b)
        assert_same_output(ref, joined[ref.request_id])


def test_more_requests_than_slots_all_complete_in_request_order(dense: Tiny) -> None:
    eng = engine(dense.path, max_batch_size=3)
    requests = [request(f"many{i}", length=2 + i, max_new_tokens=4 + i) for i in range(10)]
    results = eng.generate(requests)
    assert [r.request_id for r in results] == [r.request_id for r in requests]
    assert [r.num_response_tokens for r in results] == [4 + i for i in range(10)]
    assert all(r.finish_reason == "length" for r in results)
    assert not eng.has_unfinished()
    # The engine is reusable once idle.
    assert eng.generate([request("again", max_new_tokens=3)])[0].num_response_tokens == 3


def test_seeds_make_samples_reproducible(dense: Tiny) -> None:
    """An explicit seed fixes the sample whatever the request id; without one the seed is
    derived from the request id: reported, distinct per id and the same on a fresh engine."""

    def run() -> list:
        prompt = np.arange(1, 9, dtype=np.int64)  # numpy prompts are accepted too
        params = SamplingParams(seed=123, max_new_tokens=10)
        return engine(dense.path).generate(
            [
                GenerationRequest(request_id="a", prompt_tokens=prompt, params=params),
                GenerationRequest(request_id="b", prompt_tokens=prompt, params=params),
                GenerationRequest(request_id="c", prompt_tokens=prompt),
                GenerationRequest(request_id="d", prompt_tokens=prompt),
            ]
        )

    a, b, c, d = run()
    assert a.seed == b.seed == 123
    np.testing.assert_array_equal(a.response_tokens, b.response_tokens)
    assert (c.seed, d.seed) == (seed_from_request_id("c"), seed_from_request_id("d"))
    assert not np.array_equal(c.response_tokens, d.response_tokens)
    for first, again in zip((a, b, c, d), run(), strict=True):
        assert_same_output(first, again)


def test_abort_running_and_queued_requests(dense: Tiny) -> None:
    eng = engine(dense.path, max_batch_size=1)
    (full,) = eng.generate([request("run", max_new_tokens=20)])
    eng.add_request(request("run", max_new_tokens=20))
    eng.add_request(request("wait"))
    for _ in range(3):
        assert eng.step() == []
    assert eng.abort("run") and eng.abort("wait")
    assert not eng.abort("unknown")
    assert eng.has_unfinished()  # until step() hands the aborted results out
    results = {r.request_id: r for r in eng.step()}
    assert not eng.has_unfinished()
    run, wait = results["run"], results["wait"]
    assert run.finish_reason == wait.finish_reason == "abort"
    np.testing.assert_array_equal(run.response_tokens, full.response_tokens[:3])
    assert wait.num_response_tokens == 0 and len(wait.prompt_tokens) == 6


def test_bad_requests_are_refused(dense: Tiny) -> None:
    eng = engine(dense.path, max_seq_len=16)
    eng.add_request(request("dup"))
    with pytest.raises(ValueError, match="already"):
        eng.add_request(request("dup"))
    with pytest.raises(ValueError, match="idle"):
        eng.generate([request("other")])
    with pytest.raises(ValueError, match="no room"):
        eng.add_request(request("long", length=16))
    with pytest.raises(ValueError, match="vocabulary"):
        eng.add_request(GenerationRequest(request_id="oov", prompt_tokens=[1, 300]))
    with pytest.raises(ValueError, match="vocabulary"):
        eng.add_request(request("stop", stop_token_ids=(300,)))
    with pytest.raises(ValueError, match="non-empty"):
        eng.add_request(GenerationRequest(request_id="empty", prompt_tokens=[]))
