"""The hooks a recipe provides to the run driver, with their typed inputs.

    tokenizer  "recipes.x.tokenizer:TOKENIZER"   a `Tokenizer` object (or a class to instantiate)
    prompts    "recipes.x.task:prompts"          PromptSource(PromptRequest) -> list[PromptSpec]
    init       "recipes.x.warmstart:init"        ModelInit(ModelInitRequest) -> checkpoint dir
    evaluate   "recipes.x.evaluate:evaluate"     Evaluator(EvalRequest) -> dict[str, float]

Rewards and sample filters are typed in `rollout.py`, advantages, losses and step hooks in
`train.py`; staleness policies live in `streamrl/staleness`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import msgspec
import numpy as np
import numpy.typing as npt


@runtime_checkable
class Tokenizer(Protocol):
    """Text <-> token ids. `decode` gets untrusted model output and must never raise."""

    @property
    def vocab_size(self) -> int: ...

    @property
    def pad_token_id(self) -> int: ...

    @property
    def stop_token_id(self) -> int: ...

    def encode(self, text: str, *, bos: bool = False, stop: bool = False) -> npt.NDArray[np.int32]:
        ...

    def decode(self, tokens: Iterable[int] | npt.NDArray[np.integer]) -> str: ...


class PromptSpec(msgspec.Struct, kw_only=True, frozen=True):
    prompt_id: str  # stable: the same question has the same id in every run
    text: str
    metadata: dict[str, Any] = {}  # what the reward needs, e.g. the reference answer


class PromptRequest(msgspec.Struct, kw_only=True, frozen=True):
    seed: int
    num_prompts: int


PromptSource = Callable[[PromptRequest], list[PromptSpec]]


class ModelInitRequest(msgspec.Struct, kw_only=True, frozen=True):
    out_dir: Path  # write the HF checkpoint (config.json + safetensors) here
    seed: int
    moe: bool = False


ModelInit = Callable[[ModelInitRequest], Path]


class EvalRequest(msgspec.Struct, kw_only=True, frozen=True):
    checkpoint_dir: Path  # the weights to evaluate (HF format)
    version: int


Evaluator = Callable[[EvalRequest], dict[str, float]]
