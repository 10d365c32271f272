"""`ServerEngine`: a running inference server behind the `Engine` protocol
(streamrl/hooks/engine.py), the part `SGLangEngine` and `VLLMEngine` share.

    add_request(r)   check the prompt, pick the seed, `_submit` the blocking generate call on the
                     HTTP thread pool: the request is pending with its future
    step()           wait up to `poll_s` for any future to finish; `_parse` each finished answer
                     (the server batches continuously on its own, so a step is only a collection
                     point)
    abort(id)        `_abort([id])`: the server ends it; a later step returns it ("abort")
    load_weights     refuse a version that is not newer, `_push` it, then it is the version
    close()          `_abort` what is pending (best effort), `_close_weights`, close the client

A subclass supplies those four calls (its endpoints, its JSON, its weight updates) and its config,
a `ServerEngineConfig` subclass. Threads as the protocol says: `add_request` may run while
`step()` waits on another thread; nothing else overlaps.
"""

from __future__ import annotations

import contextlib
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path
from typing import Any, ClassVar, Generic, Literal, Self, TypeVar

import msgspec
import numpy as np
import numpy.typing as npt
from torch import Tensor

from streamrl.hooks.generation import (
    FinishReason,
    GenerationRequest,
    GenerationResult,
    SamplingParams,
    Timing,
    seed_from_request_id,
)
from streamrl.models import ModelConfig
from streamrl.producers.engine.request import checked_prompt, run_to_completion
from streamrl.producers.remote.http import JSONHTTP

PauseMode = Literal["in_place", "retract", "abort"]
"""What a weight update does to running requests (each adapter's `pause_mode` says how)."""


class ServerEngineConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """The fields every server adapter has; `SGLangConfig` and `VLLMConfig` add their own."""

    url: str
    """Base URL of the server, e.g. "http://127.0.0.1:30000" (SGLang) or
    "http://127.0.0.1:8000" (vLLM)."""
    timeout_s: float = 600.0
    """Longest a single HTTP call (one whole generation) may take."""
    max_concurrency: int = 256
    """Generations in flight at once (worker threads); the server queues beyond its own cap."""
    poll_s: float = 0.05
    """How long `step()` waits for a finished generation before returning empty-handed."""
    max_seq_len: int | None = None
    """Longest prompt + response; None = the model's `max_position_embeddings`. Set it to the
    server's context length (vLLM `--max-model-len`, SGLang `--context-length`) when that is
    smaller, so a too-long prompt is refused here."""

    def __post_init__(self) -> None:
        name = type(self).__name__
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"{name}: url must start with http:// or https://, got {self.url!r}")
        if self.max_concurrency <= 0 or self.poll_s <= 0 or self.timeout_s <= 0:
            raise ValueError(f"{name}: max_concurrency, poll_s and timeout_s must be > 0")


ConfigT = TypeVar("ConfigT", bound=ServerEngineConfig)


class Pending(msgspec.Struct, kw_only=True):
    """A request on the server: what its result needs besides the answer."""

    request: GenerationRequest
    prompt: npt.NDArray[np.int32]
    seed: int
    version: int
    """The engine's version when it was submitted (the oldest that can sample its tokens)."""
    queued_at: float
    future: Future[Any]


class Answer(msgspec.Struct, kw_only=True):
    """A generate answer in our columns (what `_parse` returns)."""

    tokens: npt.NDArray[np.int32]
    logprobs: npt.NDArray[np.float32]
    versions: npt.NDArray[np.uint32]
    finish_reason: FinishReason
    routed_experts: np.ndarray | None = None


class ServerEngine(ABC, Generic[ConfigT]):
    """The `Engine` protocol over a server's HTTP calls (see the module docstring)."""

    name: ClassVar[str]
    """The server's name in messages ("SGLang")."""
    config_type: ClassVar[type[ServerEngineConfig]]
    """The config struct `from_options` decodes."""

    def __init__(self, model_config: ModelConfig, config: ConfigT, http: JSONHTTP, *,
                 version: int) -> None:
        self.model_config, self.config, self.http = model_config, config, http
        self._version = version
        self._pending: dict[str, Pending] = {}
        self._max_seq_len = config.max_seq_len or model_config.max_position_embeddings
        self._closed = False

    @classmethod
    @abstractmethod
    def from_checkpoint(cls, checkpoint: str | Path, config: ConfigT, *,
                        version: int = 0) -> Self:
        """An engine for the server that serves `checkpoint` (we read its `config.json`)."""

    @classmethod
    def from_options(cls, checkpoint: str | Path, options: dict[str, Any]) -> Self:
        """The recipe's `rollout.engine_factory`: `options` (`rollout.engine_options`) decoded
        as the engine's config; a bad option is a `ValueError` naming the field."""
        try:
            config = msgspec.convert(options, cls.config_type)
        except msgspec.ValidationError as exc:
            raise ValueError(f"rollout.engine_options for {cls.name}: {exc}") from None
        return cls.from_checkpoint(checkpoint, config)  # type: ignore[arg-type]

    @property
    def version(self) -> int:
        """The weight version last pushed to the server (its weight-version label)."""
        return self._version

    @property
    def num_experts(self) -> int | None:
        """Routed experts per MoE layer (recorded with the routing), None for a dense model."""
        return (self.model_config.num_experts or None) if self.model_config.is_moe else None

    def add_request(self, request: GenerationRequest) -> None:
        if self._closed:
            raise RuntimeError("the engine is closed")
        if request.request_id in self._pending:
            raise ValueError(f"request id {request.request_id!r} is already in the engine")
        prompt = checked_prompt(request, self.model_config.vocab_size, self._max_seq_len)
        seed = request.params.seed
        seed = seed_from_request_id(request.request_id) if seed is None else seed
        future = self._submit(request.request_id, prompt, request.params, seed)
        self._pending[request.request_id] = Pending(
            request=request, prompt=prompt, seed=seed, version=self._version,
            queued_at=time.time(), future=future)

    def has_unfinished(self) -> bool:
        return bool(self._pending)

    def step(self) -> list[GenerationResult]:
        """Results of the requests that finished; waits up to `poll_s` for the first. A failed
        call raises its server error here (`SGLangError`, `VLLMError`; the producer stops and
        its prompts are regenerated)."""
        # A snapshot: `add_request` may insert while this waits (see the module docstring);
        # requests added meanwhile are collected by the next step.
        pending = list(self._pending.items())
        if not pending:
            return []
        done, _ = wait([p.future for _, p in pending], timeout=self.config.poll_s,
                       return_when=FIRST_COMPLETED)
        finished = [rid for rid, p in pending if p.future in done]
        return [self._result(self._pending.pop(rid)) for rid in finished]

    def abort(self, request_id: str) -> bool:
        """Ask the server to stop the request; a later `step()` returns it, finish reason
        "abort" (or its own, if it ended first)."""
        if request_id not in self._pending:
            return False
        self._abort([request_id])
        return True

    def load_weights(self, state_dict: Mapping[str, Tensor], version: int) -> None:
        """Push `state_dict` (HF names) as `version`, between steps; tokens sampled afterwards
        carry it (the server's weight-version spans)."""
        if version <= self._version:
            raise ValueError(f"weight version {version} is not newer than the loaded version "
                             f"{self._version}")
        self._push(state_dict, version)
        self._version = version

    def generate(self, requests: Iterable[GenerationRequest]) -> list[GenerationResult]:
        """Run `requests` to completion; results in request order."""
        return run_to_completion(self, requests)

    def close(self) -> None:
        """Abort what is still running on the server (best effort: it may be gone), release
        what weight updates hold, then wait for the HTTP threads. Idempotent."""
        if self._closed:
            return
        self._closed = True
        pending, self._pending = self._pending, {}
        if pending:
            # unreachable or refusing: the generations end on their own
            with contextlib.suppress(self.http.error):
                self._abort(list(pending))
        self._close_weights()
        self.http.close()

    def _result(self, p: Pending) -> GenerationResult:
        raw = p.future.result()
        finished_at = time.time()
        a = self._parse(p, raw)
        return GenerationResult(
            request_id=p.request.request_id, prompt_tokens=p.prompt, response_tokens=a.tokens,
            logprobs=a.logprobs, response_versions=a.versions, routed_experts=a.routed_experts,
            finish_reason=a.finish_reason, seed=p.seed,
            # A non-streaming answer has no admission time: start = queued, first token = end.
            timing=Timing(queued_at=p.queued_at, started_at=p.queued_at,
                          first_token_at=finished_at, finished_at=finished_at))

    @abstractmethod
    def _submit(self, request_id: str, prompt: npt.NDArray[np.int32], params: SamplingParams,
                seed: int) -> Future[Any]:
        """Start the blocking generate call on the HTTP pool (`self.http.submit`)."""

    @abstractmethod
    def _parse(self, p: Pending, answer: Any) -> Answer:
        """The generate answer (untrusted JSON) in our columns; raises the adapter's response
        error for a shape the server should never send."""

    @abstractmethod
    def _abort(self, request_ids: list[str]) -> None:
        """Ask the server to abort these requests; raises `self.http.error` if it refuses."""

    @abstractmethod
    def _push(self, state_dict: Mapping[str, Tensor], version: int) -> None:
        """One weight-update session: the server serves `state_dict`, labelled `version`."""

    def _close_weights(self) -> None:
        """Release what weight updates hold (once, at `close`, before the client closes)."""
