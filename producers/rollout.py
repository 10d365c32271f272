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

import numpy as np
import numpy.typing as npt

from streamrl.hooks.engine import Engine
from streamrl.hooks.generation import GenerationRequest, GenerationResult, SamplingParams
from streamrl.hooks.rollout import RolloutInput, RolloutSample


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
