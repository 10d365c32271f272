"""The producer-side hooks and their typed inputs: reward functions and sample filters (the
rollout function, `RolloutFn`, is typed in `streamrl.producers.rollout`).

A reward function scores one finished sample; it must not raise on a garbled answer (model output
is untrusted data): return reward 0 with a `status` that says why.

    def reward(sample: RewardInput) -> RewardOutput: ...          # "recipes.x.task:reward"

A sample filter sees one finished group (all samples of a prompt, scored) and says whether to
publish it, e.g. to skip groups whose rewards are all equal (they carry no GRPO signal).

    def keep_group(group: FilterInput) -> FilterOutput: ...         # "my.pkg:keep_group"
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt


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


RewardFn = Callable[[RewardInput], RewardOutput]


class FilterInput(msgspec.Struct, kw_only=True, frozen=True):
    prompt_id: str
    rewards: tuple[float, ...]  # one per sample of the group
    finish_reasons: tuple[str, ...]
    num_response_tokens: tuple[int, ...]


class FilterOutput(msgspec.Struct, kw_only=True, frozen=True):
    keep: bool
    reason: str = ""  # recorded in a Rejected event when keep is False


SampleFilter = Callable[[FilterInput], FilterOutput]
