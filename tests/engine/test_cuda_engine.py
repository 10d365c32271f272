"""The engine with fused decode (`EngineConfig.decode="fused"`) keeps the engine's contract:
the same samples as the eager model path, the same samples alone or continuously batched, weight
updates seen by the fused weights, and on CUDA graph replay equal to launching kernel by kernel.

Without a GPU the fused kernels run under Triton's CPU interpreter (slow: tiny shapes only)."""

from __future__ import annotations

import os

import pytest
import torch

# Must precede the kernels' import (Triton decides at build) and stay set (Triton reads it
# later too); without a GPU nothing else in the process uses Triton.
if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

from streamrl.hooks.generation import GenerationRequest, SamplingParams
from streamrl.models import load_checkpoint
from streamrl.producers.engine import EngineConfig, TorchEngine
from tests.engine.engine_util import assert_same_output, request, run_to_end
from tests.models.tiny import Tiny

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
NUM = 6 if CUDA else 4  # requests per test: the CPU interpreter costs ~0.3 s per decode step


def engine(tiny: Tiny, dtype: str = "float32", **config) -> TorchEngine:
    config = {"max_batch_size": 4, "max_seq_len": 48, "decode": "fused", **config}
    return TorchEngine(load_checkpoint(tiny.path), EngineConfig(device=DEVICE, dtype=dtype,
                                                                **config))


def requests(num: int, prefix: str = "f", **params) -> list[GenerationRequest]:
    # Prompt lengths 3..; greedy and tempered rows mixed unless params say otherwise.
    temps = [0.0, 1.0, 0.7]
    return [request(f"{prefix}{i}", length=3 + 3 * i,
                    **{"max_new_tokens": 5 + 2 * (i % 3), "temperature": temps[i % 3], **params})
            for i in range(num)]


def test_fused_decode_samples_what_the_eager_model_samples(dense: Tiny) -> None:
    # fp32: same samples (tokens exactly, logprobs to fp32 noise), greedy and tempered.
    # The top-k request makes those steps use the sorting torch sampler.
    reqs = [*requests(NUM - 1), *requests(1, "k", temperature=0.9, top_k=20)]
    eager = engine(dense, decode="eager").generate(reqs)
    fused = engine(dense).generate(reqs)
    for a, b in zip(eager, fused, strict=True):
        assert_same_output(a, b)


def test_stop_tokens_end_fused_sequences_where_eager_ones_end(dense: Tiny) -> None:
    probe = request("stop", length=5, temperature=0.0, max_new_tokens=8)
    tokens = engine(dense, decode="eager").generate([probe])[0].response_tokens
    stop = int(tokens[2])  # greedy hits it at response token 2 (or earlier)
    reqs = [request("stop", length=5, temperature=0.0, max_new_tokens=8, stop_token_ids=[stop]),
            request("other", length=4, max_new_tokens=6)]
    eager = engine(dense, decode="eager").generate(reqs)
    fused = engine(dense).generate(reqs)
    assert fused[0].finish_reason == "stop" and fused[0].response_tokens[-1] == stop
    for a, b in zip(eager, fused, strict=True):
        assert_same_output(a, b)


def test_continuous_batching_gives_each_sequence_what_it_gets_alone(dense: Tiny) -> None:
    reqs = requests(NUM, temperature=0.0)  # greedy
    solo = engine(dense, max_batch_size=1)
    alone = {r.request_id: solo.generate([r])[0] for r in reqs}
    eng = engine(dense, max_batch_size=NUM // 2)  # half of them wait, or join mid-flight
    for r in reqs[: NUM // 2]:
        eng.add_request(r)
    results = [*eng.step(), *eng.step()]
    for r in reqs[NUM // 2 :]:
        eng.add_request(r)
    results += run_to_end(eng)
    assert len(results) == len(reqs)
    for result in results:
        assert_same_output(alone[result.request_id], result)


def test_weight_updates_reach_the_fused_weights(dense: Tiny, dense_next: Tiny) -> None:
    # The fused qkv / gate-up matrices are the parameters' storage: load_weights updates them.
    reqs = requests(NUM // 2)
    eng = engine(dense)
    eng.generate(requests(1, "old", max_new_tokens=3))  # run (on CUDA: capture) with old weights
    eng.load_weights(load_checkpoint(dense_next.path).state_dict(), version=1)
    fresh = engine(dense_next).generate(reqs)
    for a, b in zip(fresh, eng.generate(reqs), strict=True):
        assert b.response_versions.tolist() == [1] * b.num_response_tokens
        assert a.response_tokens.tolist() == b.response_tokens.tolist()


def test_fused_moe_decode_samples_and_routes_as_the_eager_model(moe: Tiny) -> None:
    # Grouped experts inside the fused (on CUDA: graph-captured) step: same tokens and the same
    # recorded routing, prompt's last token and every decode step, as the eager model.
    reqs = requests(NUM // 2)
    eager = engine(moe, decode="eager").generate(reqs)
    fused = engine(moe)
    assert fused._fused is not None
    for a, b in zip(eager, fused.generate(reqs), strict=True):
        assert a.routed_experts is not None and len(a.routed_experts) == a.num_response_tokens
        assert_same_output(a, b)


def test_fused_paged_decode_preempts_and_shares_as_the_eager_engine(dense: Tiny) -> None:
    # The kernels read and write through block tables: two samples share a prompt's blocks,
    # and a pool of 6 usable blocks of 4 tokens (10 needed at full length) forces preemption.
    group = [GenerationRequest(request_id=f"g{i}", prompt_tokens=request("g", length=9)
                               .prompt_tokens, params=SamplingParams(max_new_tokens=7))
             for i in range(2)]
    reqs = [*group, request("solo", length=6, max_new_tokens=7, temperature=1.0)]
    small = dict(kv_block_size=4, kv_blocks=7, max_seq_len=16)
    eager = engine(dense, decode="eager", **small)
    fused = engine(dense, **small)
    for a, b in zip(eager.generate(reqs), fused.generate(reqs), strict=True):
        assert_same_output(a, b)
    # The same plan on both paths (the scheduler is host-side): sharing and preemption ran.
    assert fused.stats == eager.stats and fused.stats["num_preemptions"] > 0


def test_auto_decode_is_eager_on_cpu(moe: Tiny, dense: Tiny) -> None:
    if not CUDA:
        assert engine(dense, decode="auto")._fused is None
    assert (engine(moe, decode="auto")._fused is not None) == CUDA  # MoE fuses like dense


@needs_cuda
def test_graph_replay_equals_kernel_by_kernel_launches(dense: Tiny) -> None:
    # bf16, the production dtype: the captured graphs run the very same kernels, so bitwise.
    reqs = requests(7)  # 7 requests on 4 slots: bucket 4; then one alone: bucket 1
    graphs = engine(dense, dtype="bfloat16")
    launched = engine(dense, dtype="bfloat16", cuda_graphs=False)
    replayed = graphs.generate(reqs) + graphs.generate(requests(1, "alone"))
    assert {n for n, _ in graphs._fused._captured} == {1, 4}
    expected = launched.generate(reqs) + launched.generate(requests(1, "alone"))
    for a, b in zip(expected, replayed, strict=True):
        assert a.response_tokens.tolist() == b.response_tokens.tolist()
        assert a.logprobs.tolist() == b.logprobs.tolist()


@needs_cuda
def test_bf16_fused_decode_scores_like_the_eager_model(dense: Tiny) -> None:
    # bf16 kernels vs the eager bf16 model: the same greedy tokens, logprobs within bf16 noise.
    reqs = requests(4, temperature=0.0)
    eager = engine(dense, dtype="bfloat16", decode="eager").generate(reqs)
    fused = engine(dense, dtype="bfloat16").generate(reqs)
    for a, b in zip(eager, fused, strict=True):
        assert a.response_tokens.tolist() == b.response_tokens.tolist()
        assert abs(a.logprobs - b.logprobs).max() < 0.05


@needs_cuda
def test_split_attention_in_captured_steps_matches_eager(dense: Tiny) -> None:
    # Small batches split each sequence's attention over several programs and merge them; the
    # tiny model's short cache never asks for that, so force 4 splits in every bucket.
    reqs = requests(3)
    eng = engine(dense)
    eng._fused._splits = dict.fromkeys(eng._fused._splits, 4)
    for a, b in zip(engine(dense, decode="eager").generate(reqs), eng.generate(reqs),
                    strict=True):
        assert_same_output(a, b)
