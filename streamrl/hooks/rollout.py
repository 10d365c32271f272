"""The producer-side hooks and their typed inputs: rollout functions, reward functions and
sample filters.

A rollout function turns one prompt into its group (the default, `sample_n` in
`streamrl.producers.rollout`, samples it n times; multi-turn rollouts plug in here):

    async def my_rollout(inp: RolloutInput) -> list[RolloutSample]: ...   # "my.pkg:my_rollout"

An agent written against the OpenAI client runs inside one through `inp.chat(k)`: a session of
the producer's OpenAI-compatible endpoint for sample k, whose calls are stitched into that
sample (`streamrl.producers.agent`, docs/agents.md):

    async with inp.chat(k) as chat:
        client = AsyncOpenAI(base_url=chat.base_url, api_key=chat.api_key)
        ...                                  # tools, several turns
        return chat.sample()

A reward function scores one finished sample; it must not raise on a garbled answer (model output
is untrusted data): return reward 0 with a `status` that says why.

    def reward(sample: RewardInput) -> RewardOutput: ...          # "recipes.x.task:reward"

A sample filter sees one finished group (all samples of a prompt, scored) and says whether to
publish it, e.g. to skip groups whose rewards are all equal (they carry no GRPO signal).

    def keep_group(group: FilterInput) -> FilterOutput: ...         # "my.pkg:keep_group"
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from typing import Any, Protocol

import msgspec
import numpy as np
import numpy.typing as npt

from streamrl.hooks.generation import GenerationResult, SamplingParams
from streamrl.hooks.run import Tokenizer


class RewardInput(msgspec.Struct, kw_only=True, frozen=True):
    prompt_id: str
    prompt_text: str | None  # None when the prompt was given as tokens
    prompt_tokens: npt.NDArray[np.int32]  # [num_prompt_tokens]
    response_text: str  # the decoded response, stop token excluded
    response_tokens: npt.NDArray[np.int32]  # [num_response_tokens]
    finish_reason: str  # "stop", "length", "abort", "error"
    metadata: dict[str, Any]  # the prompt's metadata, e.g. the reference answer


class RewardOutput(msgspec.Struct, kw_only=True, frozen=True):
    reward: float
    details: dict[str, float] = {}  # named components, recorded in the trajectory
    status: str = "ok"  # why the reward is what it is, e.g. "unparsable", "wrong", "correct"
    # Per-token (process) rewards, one per response token (stop token included), recorded in
    # the trajectory's `token_rewards` column; None for an outcome reward only. A list of the
    # wrong length or with a NaN scores the sample 0 with status "bad_token_rewards".
    token_rewards: tuple[float, ...] | None = None


RewardFn = Callable[[RewardInput], RewardOutput]


class FilterInput(msgspec.Struct, kw_only=True, frozen=True):
    prompt_id: str
    rewards: tuple[float, ...]  # one per sample of the group
    finish_reasons: tuple[str, ...]
    num_response_tokens: tuple[int, ...]


class FilterOutput(msgspec.Struct, kw_only=True, frozen=True):
    keep: bool
    reason: str = ""  # recorded in a Rejected event's detail when keep is False
    code: str = "filtered"  # the Rejected event's stable reason_code, e.g. "zero_variance"


SampleFilter = Callable[[FilterInput], FilterOutput]


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
    # Counters about how the sample was made (e.g. an agent's number of calls), recorded in
    # the trajectory's `reward_details` beside the reward's own.
    details: dict[str, float] = {}

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


class ChatSession(Protocol):
    """One sample's session of the producer's OpenAI-compatible endpoint: point the `openai`
    client at `base_url` with `api_key`; `sample()` is every call so far stitched into one
    sample, `loss_mask` True only on tokens the engine sampled."""

    @property
    def base_url(self) -> str: ...  # "http://127.0.0.1:PORT/v1"

    @property
    def api_key(self) -> str: ...

    @property
    def model(self) -> str: ...

    def sample(self) -> RolloutSample: ...


OpenChat = Callable[[int], AbstractAsyncContextManager[ChatSession]]


class RolloutInput(msgspec.Struct, kw_only=True, frozen=True, eq=False):
    prompt_id: str
    prompt_text: str | None
    prompt_tokens: npt.NDArray[np.int32]
    metadata: dict[str, Any]
    num_samples: int
    params: Callable[[int], SamplingParams]  # the recipe's sampling params, seeded for sample k
    generate: Generate
    tokenizer: Tokenizer  # the run's tokenizer
    chat: OpenChat | None = None  # an OpenAI-compatible session for sample k (docs/agents.md)


RolloutFn = Callable[[RolloutInput], Awaitable[list[RolloutSample]]]
