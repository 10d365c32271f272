"""`SGLangEngine`: a running SGLang server behind the `Engine` protocol (streamrl/hooks/engine.py).

    engine = SGLangEngine(ModelConfig.from_file(ckpt), SGLangConfig(url="http://10.0.0.5:30000"))
    client = EngineClient(engine)            # producers/rollout.py, unchanged
    result = await client.generate(prompt_tokens, params)

It implements `streamrl.hooks.engine.Engine` (`add_request`, `step`, `abort`, `has_unfinished`,
`load_weights(tensors, version)`, `version`, `num_experts`, `close`), as `TorchEngine` does, so
the rollout worker, rollout functions and `WeightSync` drive it as they drive the embedded
engine; the same conformance suite runs against both (tests/engine/test_engine_conformance.py).
The request bookkeeping (a pending future per request, `step`, `abort`, `close`) is the shared
`ServerEngine` (producers/remote/engine.py); here are SGLang's calls: `/generate` per request,
`/abort_request`, and colocated weight updates (`weights.py`). Results carry SGLang's sampling
logprobs, per-token versions from its weight-version spans, and the routed experts of every
response token (MoE models), converted by `convert.py`.

The server must run with `--weight-version 0` (versions are our integers) and, for MoE models,
`--enable-return-routed-experts`.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from torch import Tensor

from streamrl.hooks.generation import SamplingParams
from streamrl.models import ModelConfig
from streamrl.producers.remote.engine import (
    Answer,
    PauseMode,
    Pending,
    ServerEngine,
    ServerEngineConfig,
)
from streamrl.producers.sglang import convert
from streamrl.producers.sglang.http import SGLangHTTP
from streamrl.producers.sglang.weights import push_tensors, update_session


class SGLangConfig(ServerEngineConfig, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """`url` (e.g. "http://127.0.0.1:30000"), `timeout_s`, `max_concurrency`, `poll_s` and
    `max_seq_len` are `ServerEngineConfig`'s (producers/remote/engine.py); SGLang's own:"""

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
        super().__post_init__()
        if self.tp_size <= 0:
            raise ValueError(f"SGLangConfig: tp_size must be positive, got {self.tp_size}")


class SGLangEngine(ServerEngine[SGLangConfig]):
    name = "SGLang"
    config_type = SGLangConfig
    http: SGLangHTTP

    def __init__(self, model_config: ModelConfig, config: SGLangConfig, *, version: int = 0,
                 http: SGLangHTTP | None = None) -> None:
        super().__init__(model_config, config, http or SGLangHTTP(
            config.url, timeout_s=config.timeout_s, max_concurrency=config.max_concurrency),
            version=version)

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, config: SGLangConfig, *,
                        version: int = 0) -> SGLangEngine:
        """The server serves `checkpoint`; we read only its `config.json` (routing layout)."""
        return cls(ModelConfig.from_file(checkpoint), config, version=version)

    def _submit(self, request_id: str, prompt: npt.NDArray[np.int32], params: SamplingParams,
                seed: int) -> Future[Any]:
        return self.http.submit("/generate", convert.generate_payload(
            request_id, prompt, params, seed, return_routing=self.model_config.is_moe))

    def _abort(self, request_ids: list[str]) -> None:
        for request_id in request_ids:
            self.http.call("/abort_request", {"rid": request_id})

    def _push(self, state_dict: Mapping[str, Tensor], version: int) -> None:
        """A colocated update (`update_weights_from_tensor`) stamped `version`."""
        device = self.config.tensor_device
        tensors = {k: v.to(device) for k, v in state_dict.items()} if device else state_dict
        update_session(self.http, lambda: push_tensors(
            self.http, tensors, version, tp_size=self.config.tp_size,
            flush_cache=self.config.pause_mode != "in_place"),
            pause_mode=self.config.pause_mode, session=self.config.weight_update_session)

    def _parse(self, p: Pending, answer: Any) -> Answer:
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
        return Answer(tokens=tokens, logprobs=logprobs,
                      versions=convert.response_versions(meta, len(tokens), p.version),
                      finish_reason=convert.finish_reason(meta), routed_experts=routed)


def engine_from_options(checkpoint: str | Path, options: dict[str, Any]) -> SGLangEngine:
    """The recipe's `rollout.engine_factory` for SGLang: `options` are `SGLangConfig` fields,
    e.g. `engine_options = { url = "http://127.0.0.1:30000", pause_mode = "in_place" }`."""
    return SGLangEngine.from_options(checkpoint, options)
