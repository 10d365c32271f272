"""Helpers for the engine tests: prompts, engines on tiny checkpoints, the trainer's view."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from streamrl.hooks.generation import GenerationRequest, GenerationResult, SamplingParams
from streamrl.models import CausalLM, load_checkpoint, token_logprobs
from streamrl.producers.engine import EngineConfig, TorchEngine

VOCAB = 300  # tests/models/tiny.py
# Engine vs teacher-forced logprobs, fp32 CPU (measured: <= 2e-6 on these models).
LOGPROB_ATOL = 1e-5


def engine(path: Path, max_batch_size: int = 4, max_seq_len: int = 64) -> TorchEngine:
    config = EngineConfig(max_batch_size=max_batch_size, max_seq_len=max_seq_len)
    return TorchEngine(load_checkpoint(path), config)


def prompt(length: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (length,), generator=g).tolist()


def request(
    name: str, length: int = 6, prompt_seed: int | None = None, **params
) -> GenerationRequest:
    """A request whose prompt is a function of (`prompt_seed` or its name) and its length."""
    seed = sum(map(ord, name)) * 1000 if prompt_seed is None else prompt_seed
    return GenerationRequest(
        request_id=name,
        prompt_tokens=prompt(length, seed + length),
        params=SamplingParams(**{"max_new_tokens": 12, **params}),
    )


def run_to_end(eng: TorchEngine) -> list[GenerationResult]:
    """Step until every request in `eng` finished; results in finishing order."""
    results: list[GenerationResult] = []
    while eng.has_unfinished():
        results += eng.step()
    return results


def teacher_forced(
    model: CausalLM, result: GenerationResult, temperature: float, replay: bool = False
) -> tuple[np.ndarray, np.ndarray | None, torch.Tensor]:
    """What the trainer computes for `result`: a full forward over prompt + response.

    Returns (logprobs of the response tokens [R], the routing of every position [P+R, L, k] or
    None, logits at the scoring positions P-1..P+R-2 [R, V]). With `replay`, the recorded
    routing is forced onto positions P-1..P+R-2 (see streamrl/hooks/generation.py) and the
    prompt positions route freely."""
    P = len(result.prompt_tokens)
    tokens = torch.from_numpy(np.concatenate([result.prompt_tokens, result.response_tokens]))
    positions = torch.arange(len(tokens))
    forced = mask = None
    if replay:
        assert result.routed_experts is not None
        recorded = torch.from_numpy(result.routed_experts.astype(np.int64))  # [R, L, k]
        forced = torch.zeros((len(tokens), *recorded.shape[1:]), dtype=torch.long)
        forced[P - 1 : -1] = recorded
        mask = torch.zeros(len(tokens), dtype=torch.bool)
        mask[P - 1 : -1] = True
        forced, mask = forced[None], mask[None]
    with torch.inference_mode():
        out = model(
            tokens[None].long(),
            positions[None],
            forced_routing=forced,
            routing_mask=mask,
            return_hidden=True,
        )
        hidden = out.hidden[0, P - 1 : -1]  # [R, H] the positions that score response tokens
        logp, _ = token_logprobs(hidden, model.lm_head.weight, tokens[P:], temperature=temperature)
        logits = model.logits(hidden)
    routed = None if out.routed_experts is None else out.routed_experts[0].numpy()
    return logp.numpy(), routed, logits


def assert_same_output(a: GenerationResult, b: GenerationResult) -> None:
    """Same sample: tokens, versions, routing and finish reason exactly; logprobs to fp32 noise
    (a different batch shape may change BLAS reduction order)."""
    assert a.request_id == b.request_id and a.seed == b.seed
    np.testing.assert_array_equal(a.response_tokens, b.response_tokens)
    np.testing.assert_array_equal(a.response_versions, b.response_versions)
    assert a.finish_reason == b.finish_reason
    np.testing.assert_allclose(a.logprobs, b.logprobs, rtol=0, atol=LOGPROB_ATOL)
    if a.routed_experts is None:
        assert b.routed_experts is None
    else:
        np.testing.assert_array_equal(a.routed_experts, b.routed_experts)
