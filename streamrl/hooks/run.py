"""The hooks a recipe provides to the run driver, with their typed inputs.

    tokenizer  "recipes.x.tokenizer:TOKENIZER"   a `Tokenizer` object (or a class to instantiate);
                                                 default: the checkpoint's (streamrl/data)
    prompts    "recipes.x.task:prompts"          PromptSource(PromptRequest) -> list[PromptSpec]
    init       "recipes.x.warmstart:init"        ModelInit(ModelInitRequest) -> checkpoint dir
    evaluate   "recipes.x.evaluate:evaluate"     Evaluator(EvalRequest) -> dict[str, float]

Rewards and sample filters are typed in `rollout.py`, advantages, losses and step hooks in
`train.py`; staleness policies live in `streamrl/staleness`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
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
    def stop_token_id(self) -> int:
        """Ends an answer. A tokenizer may also have `stop_token_ids` (several; this is the
        first of them): producers stop on all of them (`stop_token_ids(tokenizer)`)."""
        ...

    def encode(self, text: str, *, bos: bool = False, stop: bool = False) -> npt.NDArray[np.int32]:
        ...

    def decode(self, tokens: Iterable[int] | npt.NDArray[np.integer]) -> str: ...


def stop_token_ids(tokenizer: Tokenizer) -> tuple[int, ...]:
    """Every id that ends an answer: a tokenizer's `stop_token_ids` if it has them (a checkpoint's
    eos ids, streamrl/data/tokenizer.py), else its one `stop_token_id`."""
    ids = getattr(tokenizer, "stop_token_ids", None)
    return tuple(int(t) for t in ids) if ids else (int(tokenizer.stop_token_id),)


@runtime_checkable
class ChatTokenizer(Protocol):
    """A tokenizer that also renders chat messages (dataset prompts) with its chat template."""

    @property
    def has_chat_template(self) -> bool: ...

    def render_chat(self, messages: Sequence[dict[str, str]]) -> str:
        """The messages as text, the assistant's turn opened (`add_generation_prompt`)."""
        ...


PROMPT_TEXT = "prompt_text"  # metadata key: the text a prompt given as `tokens` was rendered from


def prompt_text(text: str | None, metadata: Mapping[str, Any]) -> str | None:
    """A published prompt's text: as given, or what its ids were rendered from (a dataset row
    through the chat template, kept in metadata[PROMPT_TEXT]); None if neither is known."""
    if text is not None:
        return text
    rendered = metadata.get(PROMPT_TEXT)
    return rendered if isinstance(rendered, str) else None


class PromptSpec(msgspec.Struct, kw_only=True, frozen=True):
    prompt_id: str  # stable: the same question has the same id in every run
    text: str
    metadata: dict[str, Any] = {}  # what the reward needs, e.g. the reference answer
    tokens: tuple[int, ...] | None = None
    """The prompt's ids when the source rendered them (a dataset through the chat template):
    published as they are, with `text` kept as metadata[PROMPT_TEXT]. None: producers encode
    `text`."""


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
