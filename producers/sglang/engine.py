"""`SGLangEngine`: a running SGLang server behind the `Engine` protocol (streamrl/hooks/engine.py).

    engine = SGLangEngine(ModelConfig.from_file(ckpt), SGLangConfig(url="http://10.0.0.5:30000"))
    client = EngineClient(engine)            # producers/rollout.py, unchanged
    result = await client.generate(prompt_tokens, params)

It implements `streamrl.hooks.engine.Engine` (`add_request`, `step`, `abort`, `has_unfinished`,
`load_weights(tensors, version)`, `version`, `num_experts`, `close`), as `TorchEngine` does, so
the rollout worker, rollout functions and `WeightSync` drive it as they drive the embedded
engine; the same conformance suite runs against both (tests/engine/test_engine_conformance.py).
`add_request` posts `/generate` on a worker thread; `step()` waits up to `poll_s` for any request
to finish and returns what finished (the server batches continuously on its own, so a step is
only a collection point). Results carry SGLang's sampling logprobs, per-token versions from its
weight-version spans, and the routed experts of every response token (MoE models), converted by
`convert.py`.

The server must run with `--weight-version 0` (versions are our integers) and, for MoE models,
`--enable-return-routed-experts`. Threads as the protocol says: `add_request` may run while
`step()` waits on another thread; nothing else overlaps.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
from torch import Tensor

from streamrl.hooks.generation import (
    GenerationRequest,
    GenerationResult,
    Timing,
    seed_from_request_id,
)
from streamrl.models import ModelConfig
from streamrl.producers.engine.request import checked_prompt, run_to_completion
from streamrl.producers.sglang import convert
from streamrl.producers.sglang.http import SGLangError, SGLangHTTP
from streamrl.producers.sglang.weights import PauseMode, push_tensors, update_session


class SGLangConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    url: str
    """Base URL of the SGLang server, e.g. "http://127.0.0.1:30000"."""
    timeout_s: float = 600.0
    """Longest a single HTTP call (one whole generation) may take."""
    max_concurrency: int = 256
    """Generations in flight at once (worker threads); the server queues beyond its own cap."""
    poll_s: float = 0.05
    """How long `step()` waits for a finished generation before returning empty-handed."""
    max_seq_len: int | None = None
    """Longest prompt + response; None = the model's `max_position_embeddings`."""
    pause_mode: PauseMode = "retract"
    """How `/pause_generation` treats running requests during a weight update: "in_place"
    keeps them and their KV (continue with old KV, as the embedded engine does), "retract"
    requeues them (KV recomputed with the new weights), "abort" ends them."""
    weight_update_session: bool = True
    """Wrap updates in `/begin_weight_update` + `/end_weight_update` (SGLang >= 0.5.21)."""
    tp_size: int = 1
    """Tensor-parallel ranks of the server (one serialized entry each, colocated updates)."""
    tensor_device: str | None = None
    """Move tensors here before a colocated update ("cuda:0": CUDA IPC handles, no copy)."""

    def __post_init__(self) -> None:
        if self.max_concurrency <= 0 or self.poll_s <= 0 or self.timeout_s <= 0:
            raise ValueError("SGLangConfig: max_concurrency, poll_s and timeout_s must be > 0")
        if self.tp_size <= 0:
            raise ValueError(f"SGLangConfig: tp_size must be positive, got {self.tp_size}")


class _Pending(msgspec.Struct, kw_only=True):
    request: GenerationRequest
    prompt: np.ndarray
    seed: int
    version: int
    queued_at: float
    future: Future[Any]


class SGLangEngine:
    def __init__(self, model_config: ModelConfig, config: SGLangConfig, *, version: int = 0,
                 http: SGLangHTTP | None = None) -> None:
        self.model_config, self.config = model_config, config
        self.http = http or SGLangHTTP(config.url, timeout_s=config.timeout_s,
                                       max_concurrency=config.max_concurrency)
        self._version = version
        self._pending: dict[str, _Pending] = {}
        self._max_seq_len = config.max_seq_len or model_config.max_position_embeddings
        self._closed = False

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, config: SGLangConfig, *,
                        version: int = 0) -> SGLangEngine:
        """The server serves `checkpoint`; we read only its `config.json` (routing layout)."""
        return cls(ModelConfig.from_file(checkpoint), config, version=version)

    @property
    def version(self) -> int:
        """The weight version last pushed to the server (SGLang's `weight_version`)."""
        return self._version

    @property
    def num_experts(self) -> int | None:
        """Routed experts per MoE layer (recorded with the routing), None for a dense model."""
        return self.model_config.num_experts or None

    def add_request(self, request: GenerationRequest) -> None:
        if self._closed:
            raise RuntimeError("the engine is closed")
        if request.request_id in self._pending:
            raise ValueError(f"request id {request.request_id!r} is already in the engine")
        prompt = checked_prompt(request, self.model_config.vocab_size, self._max_seq_len)
        seed = request.params.seed
        seed = seed_from_request_id(request.request_id) if seed is None else seed
        payload = convert.generate_payload(request.request_id, prompt, request.params, seed,
                                           return_routing=self.model_config.is_moe)
        self._pending[request.request_id] = _Pending(
            request=request, prompt=prompt, seed=seed, version=self._version,
            queued_at=time.time(), future=self.http.submit("/generate", payload))

    def has_unfinished(self) -> bool:
        return bool(self._pending)

    def step(self) -> list[GenerationResult]:
        """Results of the requests that finished; waits up to `poll_s` for the first. A failed
        call raises its `SGLangError` here (the producer stops; its prompts are regenerated)."""
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
        """Ask the server to stop the request; a later `step()` returns it ("abort")."""
        if request_id not in self._pending:
            return False
        self.http.call("/abort_request", {"rid": request_id})
        return True

    def load_weights(self, state_dict: Mapping[str, Tensor], version: int) -> None:
        """A colocated update (`update_weights_from_tensor`) stamped `version`; HF names."""
        if version <= self._version:
            raise ValueError(f"weight version {version} is not newer than the loaded version "
                             f"{self._version}")
        device = self.config.tensor_device
        tensors = {k: v.to(device) for k, v in state_dict.items()} if device else state_dict
        update_session(self.http, lambda: push_tensors(
            self.http, tensors, version, tp_size=self.config.tp_size,
            flush_cache=self.config.pause_mode != "in_place"),
            pause_mode=self.config.pause_mode, session=self.config.weight_update_session)
        self._version = version

    def generate(self, requests: Iterable[GenerationRequest]) -> list[GenerationResult]:
        """Run `requests` to completion; results in request order."""
        return run_to_completion(self, requests)

    def close(self) -> None:
        """Abort what is still running on the server (best effort: it may be gone), then wait
        for the HTTP threads. Idempotent."""
        if self._closed:
            return
        self._closed = True
        pending, self._pending = self._pending, {}
        for request_id in pending:
            try:
                self.http.call("/abort_request", {"rid": request_id})
            except SGLangError:
                break  # unreachable or refusing: the generations end on their own
        self.http.close()

    def _result(self, p: _Pending) -> GenerationResult:
        answer = p.future.result()
        finished_at = time.time()
        meta = answer.get("meta_info") if isinstance(answer, dict) else None
        if not isinstance(meta, dict):
            raise convert.SGLangResponseError("no meta_info in the /generate answer",
                                              f"request {p.request.request_id}")
        tokens, logprobs = convert.output_tokens(meta, answer.get("output_ids"))
        mc, routed = self.model_config, None
        if mc.is_moe:
            routed = convert.routed_experts(
                meta.get("routed_experts"), num_prompt_tokens=len(p.prompt),
                num_response_tokens=len(tokens), start_len=len(p.prompt) - 1,
                num_hidden_layers=mc.num_hidden_layers, moe_layers=mc.moe_layers,
                top_k=mc.num_experts_per_tok, num_experts=mc.num_experts)
        return GenerationResult(
            request_id=p.request.request_id, prompt_tokens=p.prompt, response_tokens=tokens,
            logprobs=logprobs, response_versions=convert.response_versions(
                meta, len(tokens), p.version),
            routed_experts=routed, finish_reason=convert.finish_reason(meta), seed=p.seed,
            # SGLang reports no per-request admission time: start = queued, first token = end.
            timing=Timing(queued_at=p.queued_at, started_at=p.queued_at,
                          first_token_at=finished_at, finished_at=finished_at))


def engine_from_options(checkpoint: str | Path, options: dict[str, Any]) -> SGLangEngine:
    """The recipe's `rollout.engine_factory` for SGLang: `options` are `SGLangConfig` fields,
    e.g. `engine_options = { url = "http://127.0.0.1:30000", pause_mode = "in_place" }`."""
    try:
        config = msgspec.convert(options, SGLangConfig)
    except msgspec.ValidationError as exc:
        raise ValueError(f"rollout.engine_options for SGLang: {exc}") from None
    return SGLangEngine.from_checkpoint(checkpoint, config)
