"""`VLLMEngine`: a running vLLM server behind the `Engine` protocol (streamrl/hooks/engine.py).

    engine = VLLMEngine.from_checkpoint(ckpt, VLLMConfig(url="http://127.0.0.1:8000"))
    client = EngineClient(engine)            # producers/rollout.py, unchanged

It implements the protocol as `TorchEngine` and `SGLangEngine` do, and the same conformance
suite runs against it, against a real server (tests/engine/test_engine_conformance.py).
`add_request` posts the token-in/token-out generate endpoint (`convert.py`) on a worker thread;
`step()` waits up to `poll_s` for any request to finish (the server batches continuously on its
own, so a step is only a collection point). `abort` asks the server to abort the request, whose
generate call then answers with the tokens sampled so far and finish reason "abort".
`load_weights` is an update session (`weights.py`): a file the server reloads in place, or an
NCCL broadcast; each token's version comes from the server's weight-version spans.

The server must run with `VLLM_SERVER_DEV_MODE=1` (the pause, relabel and reload endpoints),
`--skip-tokenizer-init` or a tokenizer (ids travel either way) and `--logprobs-mode
processed_logprobs` (logprobs of log_softmax(logits / T), our convention; they differ from ours
only when top-p/top-k truncate, as SGLang's do). `server.py` starts one that way. Threads as the
protocol says: `add_request` may run while `step()` waits on another thread; nothing else
overlaps.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path
from typing import Any, Literal

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
from streamrl.models.checkpoint import read_safetensors
from streamrl.producers.engine.request import checked_prompt, run_to_completion
from streamrl.producers.vllm import convert
from streamrl.producers.vllm.http import VLLMHTTP, VLLMError
from streamrl.producers.vllm.weights import (
    FileReload,
    NCCLWeightSender,
    PauseMode,
    update_session,
    with_tied_head,
)


class VLLMConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    url: str
    """Base URL of the vLLM server, e.g. "http://127.0.0.1:8000"."""
    timeout_s: float = 600.0
    """Longest a single HTTP call (one whole generation) may take."""
    max_concurrency: int = 256
    """Generations in flight at once (worker threads); the server queues beyond its own cap."""
    poll_s: float = 0.05
    """How long `step()` waits for a finished generation before returning empty-handed."""
    max_seq_len: int | None = None
    """Longest prompt + response; None = the model's `max_position_embeddings`. Set it to the
    server's `--max-model-len` when that is smaller, so a too-long prompt is refused here."""
    pause_mode: PauseMode = "retract"
    """What a weight update does to running requests: "retract" recomputes their KV with the
    new weights, "in_place" keeps their KV (as the embedded engine does; serve with
    `--no-enable-prefix-caching`), "abort" ends them."""
    weight_transfer: Literal["file", "nccl"] = "file"
    """How `load_weights` reaches the server: "file" writes safetensors into `weights_dir`,
    which the server reloads in place (same machine or a shared filesystem); "nccl" broadcasts
    from this process's GPU (server started with `--weight-transfer-config
    '{"backend": "nccl"}'`)."""
    weights_dir: str | None = None
    """Where "file" updates are written; None = a fresh directory under /dev/shm (else the
    system temp dir), removed at `close`."""
    num_server_ranks: int = 1
    """"nccl": the server's workers (TP x PP x DP), ranks 1.. of the weight group."""
    nccl_device: str = "cuda"
    """"nccl": the device this process broadcasts from."""
    reload_on_start: bool = True
    """Push the checkpoint's weights to the server when the engine starts (as any update), so
    version 0 is what the server serves even after an earlier producer pushed newer weights.
    False: only label the served weights 0 (start the server on the run's initial weights)."""

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"VLLMConfig: url must start with http:// or https://, got "
                             f"{self.url!r}")
        if self.max_concurrency <= 0 or self.poll_s <= 0 or self.timeout_s <= 0:
            raise ValueError("VLLMConfig: max_concurrency, poll_s and timeout_s must be > 0")
        if self.num_server_ranks <= 0:
            raise ValueError(f"VLLMConfig: num_server_ranks must be positive, got "
                             f"{self.num_server_ranks}")


class _Pending(msgspec.Struct, kw_only=True):
    request: GenerationRequest
    prompt: np.ndarray
    seed: int
    version: int
    queued_at: float
    future: Future[Any]


class VLLMEngine:
    def __init__(self, model_config: ModelConfig, config: VLLMConfig, *, version: int = 0,
                 checkpoint: Path | None = None, http: VLLMHTTP | None = None) -> None:
        if model_config.is_moe:
            raise ValueError("VLLMEngine serves dense models only: vLLM's routed-experts capture "
                             "is not wired to the trajectory's routing columns yet (use the "
                             "torch engine or SGLang for MoE routing replay)")
        self.model_config, self.config = model_config, config
        self.http = http or VLLMHTTP(config.url, timeout_s=config.timeout_s,
                                     max_concurrency=config.max_concurrency)
        self._pending: dict[str, _Pending] = {}
        self._max_seq_len = config.max_seq_len or model_config.max_position_embeddings
        self._closed = False
        self._own_dir: Path | None = None
        if config.weight_transfer == "nccl":
            self._pusher: FileReload | NCCLWeightSender = NCCLWeightSender(
                self.http, num_server_ranks=config.num_server_ranks, device=config.nccl_device)
        else:
            directory = Path(config.weights_dir) if config.weights_dir else self._temp_dir()
            self._pusher = FileReload(self.http, directory, config_json=(
                checkpoint / "config.json" if checkpoint is not None else None))
        if config.reload_on_start and checkpoint is not None:
            tensors = with_tied_head(read_safetensors(checkpoint), model_config.tie_word_embeddings)
            update_session(self.http, lambda: self._pusher.push(tensors, version), version,
                           pause_mode="retract")
        else:  # label the served weights, so the server's spans speak our integers
            self.http.call("/update_weight_version", {"new_version": str(version)})
        self._version = version

    def _temp_dir(self) -> Path:
        shm = Path("/dev/shm")
        self._own_dir = Path(tempfile.mkdtemp(prefix="streamrl-vllm-",
                                              dir=shm if shm.is_dir() else None))
        return self._own_dir

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, config: VLLMConfig, *,
                        version: int = 0) -> VLLMEngine:
        """The server serves `checkpoint`; we read its `config.json` (vocabulary, length)."""
        checkpoint = Path(checkpoint)
        return cls(ModelConfig.from_file(checkpoint), config, version=version,
                   checkpoint=checkpoint)

    @property
    def version(self) -> int:
        """The weight version last pushed to the server (its weight-version label)."""
        return self._version

    @property
    def num_experts(self) -> int | None:
        return None  # dense models only (see __init__)

    def add_request(self, request: GenerationRequest) -> None:
        if self._closed:
            raise RuntimeError("the engine is closed")
        if request.request_id in self._pending:
            raise ValueError(f"request id {request.request_id!r} is already in the engine")
        prompt = checked_prompt(request, self.model_config.vocab_size, self._max_seq_len)
        seed = request.params.seed
        seed = seed_from_request_id(request.request_id) if seed is None else seed
        payload = convert.generate_payload(request.request_id, prompt, request.params, seed)
        self._pending[request.request_id] = _Pending(
            request=request, prompt=prompt, seed=seed, version=self._version,
            queued_at=time.time(), future=self.http.submit(convert.GENERATE, payload))

    def has_unfinished(self) -> bool:
        return bool(self._pending)

    def step(self) -> list[GenerationResult]:
        """Results of the requests that finished; waits up to `poll_s` for the first. A failed
        call raises its `VLLMError` here (the producer stops; its prompts are regenerated)."""
        # A snapshot: `add_request` may insert while this waits; later ones go next step.
        pending = list(self._pending.items())
        if not pending:
            return []
        done, _ = wait([p.future for _, p in pending], timeout=self.config.poll_s,
                       return_when=FIRST_COMPLETED)
        finished = [rid for rid, p in pending if p.future in done]
        return [self._result(self._pending.pop(rid)) for rid in finished]

    def abort(self, request_id: str) -> bool:
        """Ask the server to abort the request; a later `step()` returns it with the tokens
        sampled so far ("abort", or its own finish reason if it ended first)."""
        if request_id not in self._pending:
            return False
        self.http.call(convert.ABORT, {"request_ids": [convert.engine_request_id(request_id)]})
        return True

    def load_weights(self, state_dict: Mapping[str, Tensor], version: int) -> None:
        """Push `state_dict` (HF names) as `version`, between steps (module docstring)."""
        if version <= self._version:
            raise ValueError(f"weight version {version} is not newer than the loaded version "
                             f"{self._version}")
        tensors = with_tied_head(state_dict, self.model_config.tie_word_embeddings)
        update_session(self.http, lambda: self._pusher.push(tensors, version), version,
                       pause_mode=self.config.pause_mode)
        self._version = version

    def generate(self, requests: Iterable[GenerationRequest]) -> list[GenerationResult]:
        """Run `requests` to completion; results in request order."""
        return run_to_completion(self, requests)

    def close(self) -> None:
        """Abort what is still running on the server (best effort: it may be gone), wait for
        the HTTP threads, remove our weight files. Idempotent."""
        if self._closed:
            return
        self._closed = True
        pending, self._pending = self._pending, {}
        if pending:
            # best effort: if unreachable or refusing, the generations end on their own
            with contextlib.suppress(VLLMError):
                self.http.call(convert.ABORT, {"request_ids": [
                    convert.engine_request_id(rid) for rid in pending]})
        with contextlib.suppress(VLLMError):
            self._pusher.close()
        self.http.close()
        if self._own_dir is not None:
            shutil.rmtree(self._own_dir, ignore_errors=True)

    def _result(self, p: _Pending) -> GenerationResult:
        where = f"request {p.request.request_id}"
        ch = convert.choice(p.future.result(), where)
        finished_at = time.time()
        tokens, logprobs = convert.output_tokens(ch, where)
        return GenerationResult(
            request_id=p.request.request_id, prompt_tokens=p.prompt, response_tokens=tokens,
            logprobs=logprobs,
            response_versions=convert.response_versions(ch, len(tokens), p.version, where),
            routed_experts=None, finish_reason=convert.finish_reason(ch, where), seed=p.seed,
            # vLLM's non-streaming answer has no admission time: start = queued, first = end.
            timing=Timing(queued_at=p.queued_at, started_at=p.queued_at,
                          first_token_at=finished_at, finished_at=finished_at))


def engine_from_options(checkpoint: str | Path, options: dict[str, Any]) -> VLLMEngine:
    """The recipe's `rollout.engine_factory` for vLLM (`engine_factory = "vllm"`): `options`
    are `VLLMConfig` fields, e.g. `engine_options = { url = "http://127.0.0.1:8000" }`."""
    try:
        config = msgspec.convert(options, VLLMConfig)
    except msgspec.ValidationError as exc:
        raise ValueError(f"rollout.engine_options for vLLM: {exc}") from None
    return VLLMEngine.from_checkpoint(checkpoint, config)
