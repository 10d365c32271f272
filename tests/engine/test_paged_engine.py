"""The paged KV cache as a user of the engine sees it: a pool too small for every sequence at
once preempts and recomputes without changing any sample; the samples of one prompt share its
blocks (prefilled once) and sample what they sample unshared; a long prompt is prefilled in
chunks while running sequences keep decoding; bad pool settings are refused up front."""

from __future__ import annotations

import pytest

from streamrl.hooks.generation import GenerationRequest, SamplingParams
from streamrl.models import load_checkpoint
from streamrl.producers.engine import EngineConfig, TorchEngine
from tests.engine.engine_util import assert_same_output, prompt, request, run_to_end
from tests.models.tiny import Tiny


def engine(tiny: Tiny, **config) -> TorchEngine:
    config = {"max_batch_size": 4, "max_seq_len": 64, "kv_block_size": 4, **config}
    return TorchEngine(load_checkpoint(tiny.path), EngineConfig(**config))


def group(name: str, length: int, n: int, **params) -> list[GenerationRequest]:
    """`n` samples of one prompt (different request ids, so different seeds)."""
    tokens = prompt(length, seed=length)
    params = SamplingParams(**{"max_new_tokens": 10, "temperature": 1.0, **params})
    return [GenerationRequest(request_id=f"{name}{i}", prompt_tokens=tokens, params=params)
            for i in range(n)]


def test_a_pool_too_small_preempts_and_recomputes_the_same_samples(tiny: Tiny) -> None:
    # 4 sequences of up to 9 + 24 tokens need 4 x 9 blocks of 4; the pool has 14 (one is
    # scratch): the newest are preempted as the others grow, and resume by recompute.
    reqs = [request(f"p{i}", length=9, max_new_tokens=24, temperature=1.0) for i in range(4)]
    roomy = engine(tiny, max_seq_len=36).generate(reqs)
    small = engine(tiny, max_seq_len=36, kv_blocks=14)
    tight = small.generate(reqs)
    assert small.stats["num_preemptions"] > 0
    assert small.stats["num_prefill_tokens"] > 4 * 9  # recomputed context counts too
    for a, b in zip(roomy, tight, strict=True):
        assert a.num_response_tokens == 24
        assert_same_output(a, b)


def test_samples_of_one_prompt_share_its_blocks_and_sample_as_unshared(tiny: Tiny) -> None:
    # Prompt lengths 9 (last block partly filled: copied per sample) and 8 (ends on a block
    # boundary: its last token's block is the second, copied too).
    reqs = group("a", 9, 3) + group("b", 8, 3)
    shared = engine(tiny, max_batch_size=6)
    unshared = engine(tiny, max_batch_size=6, prefix_sharing=False)
    for a, b in zip(unshared.generate(reqs), shared.generate(reqs), strict=True):
        assert_same_output(a, b)
    assert unshared.stats["num_prefill_tokens"] == 3 * 9 + 3 * 8
    # Each prompt once, then one token (its last) per further sample.
    assert shared.stats["num_prefill_tokens"] == 9 + 8 + 2 * 2


def test_a_group_finishes_in_the_first_round_its_slots_allow(tiny: Tiny) -> None:
    # Four prompts of 4 samples, 8 slots: the first two groups run together and finish before
    # any sample of the last two starts. (The siblings wait one step for their prompt's
    # prefill; later prompts must not take their slots meanwhile, or every group would finish
    # only in the last round and a producer publish nothing until then.)
    reqs = [r for name in "abcd" for r in group(name, 6 + "abcd".index(name), 4,
                                                   max_new_tokens=5)]
    eng = engine(tiny, max_batch_size=8)
    for r in reqs:
        eng.add_request(r)
    order = [r.request_id[0] for r in run_to_end(eng)]
    assert sorted(order[:8]) == sorted("aaaabbbb"), order
    assert eng.stats["num_prefill_tokens"] == sum(6 + i + 3 for i in range(4))  # still shared


def test_a_sample_admitted_later_still_shares_the_running_prompt(dense: Tiny) -> None:
    # One slot free at a time: the second sample joins after the first finished prefill and
    # is decoding; it shares what the first holds.
    reqs = group("late", 11, 2, max_new_tokens=6)
    eng = engine(dense, max_batch_size=2)
    eng.add_request(reqs[0])
    eng.step()
    eng.step()
    eng.add_request(reqs[1])
    late = {r.request_id: r for r in run_to_end(eng)}
    alone = engine(dense, prefix_sharing=False).generate(reqs)
    for a in alone:
        assert_same_output(a, late[a.request_id])
    assert eng.stats["num_prefill_tokens"] == 11 + 1


def test_a_long_prompt_is_prefilled_in_chunks_while_others_decode(dense: Tiny) -> None:
    short = request("short", length=4, max_new_tokens=8, temperature=1.0)
    long = request("long", length=40, max_new_tokens=4, temperature=1.0)
    eng = engine(dense, max_step_tokens=8)
    eng.add_request(short)
    eng.step()  # short is prefilled and samples its first token
    eng.add_request(long)
    done: dict = {}
    prefilled = []  # prompt tokens prefilled in each step
    while "short" not in done:
        before = eng.stats["num_prefill_tokens"]
        done.update((r.request_id, r) for r in eng.step())
        prefilled.append(eng.stats["num_prefill_tokens"] - before)
    # The short one gained a token every step (7 more) while the 40-token prompt went through
    # in chunks of the budget left beside it (8 - 1).
    assert prefilled == [7, 7, 7, 7, 7, 5, 0]
    assert "long" not in done
    done.update((r.request_id, r) for r in run_to_end(eng))
    whole = engine(dense).generate([short, long])  # one step prefills both prompts whole
    for a in whole:
        assert_same_output(a, done[a.request_id])


@pytest.mark.parametrize(("config", "message"), [
    ({"kv_blocks": 10}, "fewer than one sequence"),
    ({"kv_memory_fraction": 0.5}, "needs a CUDA device"),
    ({"kv_blocks": 40, "kv_memory_fraction": 0.5}, "not both"),
    ({"max_step_tokens": 0}, "must be positive"),
])
def test_bad_pool_settings_are_refused(dense: Tiny, config: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        engine(dense, **config)
