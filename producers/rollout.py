"""Rollout functions: how one prompt becomes a group of samples. The default samples the prompt n
times; a recipe's own function (multi-turn, tool use, custom stopping) plugs in by import path:

    async def my_rollout(inp: RolloutInput) -> list[RolloutSample]: ...   # "my.pkg:my_rollout"

`inp.generate(prompt_tokens, params)` runs one generation on the producer's engine and resolves
when it finishes; many may be awaited at once and are batched together. A multi-turn rollout
concatenates turns into one response, with `loss_mask` False (and logprob 0) on tokens the model
did not sample, such as tool output.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

from streamrl.hooks.engine import Engine
from streamrl.hooks.generation import GenerationRequest, GenerationResult, SamplingParams


class RolloutSample(msgspec.Struct, kw_only=True, frozen=True, eq=False):
    """One finished sample of a group, as the trajectory schema records it."""

    prompt_tokens: npt.NDArray[np.int32]  # [num_prompt_tokens]
    response_tokens: npt.NDArray[np.int32]  # [num_response_tokens]
    logprobs: npt.NDArray[np.float32]  # [num_response_tokens]
    loss_mask: npt.NDArray[np.bool_]  # [num_response_tokens] False where the model did not sample
    response_versions: npt.NDArray[np.uint32]  # [num_response_tokens]
    routed_experts: npt.NDArray[np.uint8] | npt.NDArray[np.uint16] | None
    finish_reason: str
    seed: int
    started_at: datetime
    finished_at: datetime

    @classmethod
    def from_generation(cls, result: GenerationResult) -> RolloutSample:
        return cls(
            prompt_tokens=result.prompt_tokens, response_tokens=result.response_tokens,
            logprobs=result.logprobs, loss_mask=np.ones(len(result.response_tokens), dtype=bool),
            response_versions=result.response_versions, routed_experts=result.routed_experts,
            finish_reason=result.finish_reason, seed=result.seed,
            started_at=datetime.fromtimestamp(result.timing.started_at, UTC),
            finished_at=datetime.fromtimestamp(result.timing.finished_at, UTC))


Generate = Callable[[npt.NDArray[np.int32], SamplingParams], Awaitable[GenerationResult]]


class RolloutInput(msgspec.Struct, kw_only=True, frozen=True, eq=False):
    prompt_id: str
    prompt_text: str | None
    prompt_tokens: npt.NDArray[np.int32]
    metadata: dict[str, Any]
    num_samples: int
    params: Callable[[int], SamplingParams]  # the recipe's sampling params, seeded for sample k
    generate: Generate
    tokenizer: Any  # the run's Tokenizer (streamrl.hooks.run)


RolloutFn = Callable[[RolloutInput], Awaitable[list[RolloutSample]]]


async def sample_n(inp: RolloutInput) -> list[RolloutSample]:
    """The default: `num_samples` independent samples of the prompt, generated together."""
    results = await asyncio.gather(*(inp.generate(inp.prompt_tokens, inp.params(k))
                                     for k in range(inp.num_samples)))
    return [RolloutSample.from_generation(r) for r in results]


class EngineClient:
    """Awaitable generations over a step-driven engine: `generate` queues a request and returns
    a future; whoever drives the engine calls `step()` and the futures of finished requests
    resolve. Not thread-safe: one event loop drives it."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._futures: dict[str, asyncio.Future[GenerationResult]] = {}
        self._next_id = 0

    async def generate(self, prompt_tokens: npt.NDArray[np.int32],
                       params: SamplingParams) -> GenerationResult:
        request_id = f"g{self._next_id}"
        self._next_id += 1
        future = asyncio.get_running_loop().create_future()
        self._futures[request_id] = future
        self.engine.add_request(GenerationRequest(request_id=request_id,
                                                  prompt_tokens=prompt_tokens, params=params))
        return await future

    def has_work(self) -> bool:
        return self.engine.has_unfinished()

    async def step(self) -> None:
        for result in await asyncio.to_thread(self.engine.step):
            future = self._futures.pop(result.request_id)
            if not future.done():
                future.set_result(result)
