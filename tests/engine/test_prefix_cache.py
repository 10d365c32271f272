"""Prefix caching across turns, as a user of the engine sees it: the next turn of a conversation
(its prompt = the last prompt + response + new context) prefills only what the last turn did
not leave in full KV blocks, and samples exactly what an engine without the cache samples; a
pool too small to keep everything evicts cached blocks and preempts without changing any
sample; new weights clear the cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamrl.hooks.generation import GenerationRequest, GenerationResult, SamplingParams
from streamrl.models import load_checkpoint
from streamrl.models.checkpoint import read_safetensors
from streamrl.models.lora import LoraSpec
from streamrl.producers.engine import EngineConfig, TorchEngine
from streamrl.producers.engine.blocks import chain_keys
from tests.engine.engine_util import assert_same_output, prompt
from tests.lora.conftest import random_adapter
from tests.models.tiny import Tiny

BLOCK = 4


def engine(tiny: Tiny, **config) -> TorchEngine:
    config = {"max_batch_size": 4, "max_seq_len": 40, "kv_block_size": BLOCK, **config}
    return TorchEngine(load_checkpoint(tiny.path), EngineConfig(**config))


def turn(name: str, tokens, max_new_tokens: int) -> GenerationRequest:
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=1.0)
    return GenerationRequest(request_id=name, prompt_tokens=list(tokens), params=params)


def next_prompt(result: GenerationResult, context: int) -> list[int]:
    """The conversation so far plus `context` new tokens (a tool's answer, a user's turn)."""
    new = prompt(context, seed=context + 7) if context else []
    return [*result.prompt_tokens.tolist(), *result.response_tokens.tolist(), *new]


def prefilled(eng: TorchEngine, requests: list[GenerationRequest]
              ) -> tuple[list[GenerationResult], int, int]:
    """Results, and the prefill and cached-prefix tokens these requests cost."""
    before = eng.stats
    results = eng.generate(requests)
    after = eng.stats
    return (results, after["num_prefill_tokens"] - before["num_prefill_tokens"],
            after["num_cached_prefix_tokens"] - before["num_cached_prefix_tokens"])


@pytest.mark.parametrize(("prompt_len", "response_len", "context", "cached"), [
    (9, 6, 3, 12),  # k/v final up to position 13: blocks 0-2 (positions 0-11) reused
    (7, 6, 4, 12),  # final up to position 11 exactly: block 2 just made it
    (8, 8, 0, 12),  # no new context: the last sampled token's k/v (position 15) was never
                    # written, so block 3 is not reused and positions 12-15 are prefilled
])
def test_the_next_turn_prefills_only_its_new_tokens(
        tiny: Tiny, prompt_len: int, response_len: int, context: int, cached: int) -> None:
    first = turn("c-t0", prompt(prompt_len, seed=prompt_len), response_len)
    outputs = {}
    for caching in (True, False):
        eng = engine(tiny, prefix_caching=caching)
        [a], _, _ = prefilled(eng, [first])
        assert a.num_response_tokens == response_len
        second = turn("c-t1", next_prompt(a, context), 5)
        [b], num_prefill, num_cached = prefilled(eng, [second])
        total = prompt_len + response_len + context
        expected = cached if caching else 0
        assert (num_prefill, num_cached) == (total - expected, expected)
        outputs[caching] = (a, b)
    for a, b in zip(outputs[True], outputs[False], strict=True):
        assert_same_output(a, b)


def test_a_repeated_prompt_reuses_all_but_its_last_block(dense: Tiny) -> None:
    # An 8-token prompt seen before: block 0 is reused, block 1 holds the last token, whose
    # logits must be computed to sample: 4 tokens prefilled.
    eng = engine(dense)
    tokens = prompt(8, seed=8)
    prefilled(eng, [turn("first", tokens, 3)])
    [again], num_prefill, num_cached = prefilled(eng, [turn("again", tokens, 3)])
    [alone] = engine(dense, prefix_caching=False).generate([turn("again", tokens, 3)])
    assert (num_prefill, num_cached) == (4, 4)
    assert_same_output(alone, again)


def test_a_small_pool_evicts_cached_blocks_and_samples_the_same(dense: Tiny) -> None:
    # Four two-turn conversations; each first turn leaves 4 full blocks, the pool has 13 (and
    # turn 2 needs 7 a sequence): cached blocks are evicted and sequences preempted, and every
    # sample equals the roomy uncached engine's.
    firsts = [turn(f"c{i}-t0", prompt(9, seed=100 + i), 8) for i in range(4)]

    def converse(eng: TorchEngine) -> tuple[list[GenerationResult], int]:
        ones = eng.generate(firsts)
        conversations = [np.concatenate([r.prompt_tokens, r.response_tokens]) for r in ones]
        pool = eng.scheduler.pool
        kept = sum(len(pool.lookup(chain_keys(c, b"", BLOCK, 4))) for c in conversations)
        seconds = [turn(f"c{i}-t1", next_prompt(r, 3), 8) for i, r in enumerate(ones)]
        return ones + eng.generate(seconds), kept

    reference, none = converse(engine(dense, prefix_caching=False))
    roomy_results, roomy = converse(engine(dense))
    tight = engine(dense, kv_blocks=14)
    tight_results, some = converse(tight)
    assert (none, roomy) == (0, 16)
    assert 0 < some <= 13  # at most the pool: the rest of the 16 were evicted
    assert tight.stats["num_preemptions"] > 0 and tight.stats["num_cached_prefix_tokens"] > 0
    for a, b, c in zip(reference, roomy_results, tight_results, strict=True):
        assert_same_output(a, b)
        assert_same_output(a, c)


def test_new_weights_clear_the_cache(dense: Tiny, dense_next: Tiny) -> None:
    new_weights = read_safetensors(dense_next.path)
    first = turn("c-t0", prompt(9, seed=9), 6)
    outputs = []
    for caching in (True, False):
        eng = engine(dense, prefix_caching=caching)
        [a] = eng.generate([first])
        eng.load_weights(new_weights, version=1)
        second = turn("c-t1", next_prompt(a, 3), 5)
        [b], num_prefill, num_cached = prefilled(eng, [second])
        assert (num_prefill, num_cached) == (18, 0)  # all of it, with the new weights
        assert b.response_versions.tolist() == [1] * 5
        outputs.append(b)
    assert_same_output(*outputs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_fused_cuda_engine_reads_cached_blocks(dense: Tiny) -> None:
    # The Triton prefill and decode read the cached blocks through the same block tables.
    first = turn("c-t0", prompt(9, seed=9), 6)
    outputs = {}
    for caching in (True, False):
        eng = engine(dense, device="cuda", decode="fused", prefix_caching=caching)
        [a] = eng.generate([first])
        [b], num_prefill, num_cached = prefilled(eng, [turn("c-t1", next_prompt(a, 3), 5)])
        assert (num_prefill, num_cached) == ((6, 12) if caching else (18, 0))
        outputs[caching] = (a, b)
    for a, b in zip(outputs[True], outputs[False], strict=True):
        assert_same_output(a, b)


def test_a_lora_adapters_turns_never_reuse_the_bases_blocks(dense: Tiny) -> None:
    # The same tokens through another adapter have other k/v: keyed apart.
    adapter = random_adapter(dense, LoraSpec(rank=4, alpha=8), seed=1)
    first = turn("c-t0", prompt(9, seed=9), 6)
    outputs = []
    for caching in (True, False):
        eng = engine(dense, prefix_caching=caching)
        eng.load_adapter(adapter, "a")
        [a] = eng.generate([first])  # the base model
        tokens = next_prompt(a, 3)
        second = GenerationRequest(request_id="c-t1", prompt_tokens=tokens, adapter="a",
                                   params=SamplingParams(max_new_tokens=5, temperature=1.0))
        [b], num_prefill, num_cached = prefilled(eng, [second])
        assert (num_prefill, num_cached) == (18, 0)
        [c], num_prefill, num_cached = prefilled(eng, [turn("c-t1-base", tokens, 5)])
        assert (num_prefill, num_cached) == ((6, 12) if caching else (18, 0))
        outputs.append((b, c))
    for x, y in zip(*outputs, strict=True):
        assert_same_output(x, y)
