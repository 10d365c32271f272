"""`VLLMEngine`: a running vLLM server behind the `Engine` protocol (streamrl/hooks/engine.py).

    engine = VLLMEngine.from_checkpoint(ckpt, VLLMConfig(url="http://127.0.0.1:8000"))
    client = EngineClient(engine)            # producers/rollout.py, unchanged

It implements the protocol as `TorchEngine` and `SGLangEngine` do, and the same conformance
suite runs against it, against a real server (tests/engine/test_engine_conformance.py). The
request bookkeeping (a pending future per request, `step`, `abort`, `close`) is the shared
`ServerEngine` (producers/remote/engine.py); here are vLLM's calls: `add_request` posts the
token-in/token-out generate endpoint (`convert.py`); `abort` asks the server to abort the
request, whose generate call then answers with the tokens sampled so far and finish reason
"abort".
`load_weights` is an update session (`weights.py`): a file the server reloads in place, or an
NCCL broadcast; each token's version comes from the server's weight-version spans.

The server must run with `VLLM_SERVER_DEV_MODE=1` (the pause, relabel and reload endpoints),
`--skip-tokenizer-init` or a tokenizer (ids travel either way) and `--logprobs-mode
processed_logprobs` (logprobs of log_softmax(logits / T), our convention; they differ from ours
only when top-p/top-k truncate, as SGLang's do). `server.py` starts one that way.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from torch import Tensor

from streamrl.hooks.generation import SamplingParams
from streamrl.models import ModelConfig
from streamrl.models.checkpoint import read_safetensors
from streamrl.producers.remote.engine import (
    Answer,
    PauseMode,
    Pending,
    ServerEngine,
    ServerEngineConfig,
)
from streamrl.producers.vllm import convert
from streamrl.producers.vllm.http import VLLMHTTP, VLLMError
from streamrl.producers.vllm.weights import (
    FileReload,
    NCCLWeightSender,
    update_session,
    with_tied_head,
)


class VLLMConfig(ServerEngineConfig, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """`url` (e.g. "http://127.0.0.1:8000"), `timeout_s`, `max_concurrency`, `poll_s` and
    `max_seq_len` (the server's `--max-model-len` when smaller than the model's) are
    `ServerEngineConfig`'s (producers/remote/engine.py); vLLM's own:"""

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
        super().__post_init__()
        if self.num_server_ranks <= 0:
            raise ValueError(f"VLLMConfig: num_server_ranks must be positive, got "
                             f"{self.num_server_ranks}")


class VLLMEngine(ServerEngine[VLLMConfig]):
    name = "vLLM"
    config_type = VLLMConfig
    http: VLLMHTTP

    def __init__(self, model_config: ModelConfig, config: VLLMConfig, *, version: int = 0,
                 checkpoint: Path | None = None, http: VLLMHTTP | None = None) -> None:
        if model_config.is_moe:
            raise ValueError("VLLMEngine serves dense models only: vLLM's routed-experts capture "
                             "is not wired to the trajectory's routing columns yet (use the "
                             "torch engine or SGLang for MoE routing replay)")
        super().__init__(model_config, config, http or VLLMHTTP(
            config.url, timeout_s=config.timeout_s, max_concurrency=config.max_concurrency),
            version=version)
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

    def _submit(self, request_id: str, prompt: npt.NDArray[np.int32], params: SamplingParams,
                seed: int) -> Future[Any]:
        return self.http.submit(convert.GENERATE,
                                convert.generate_payload(request_id, prompt, params, seed))

    def _abort(self, request_ids: list[str]) -> None:
        """The generate calls then answer with the tokens sampled so far."""
        self.http.call(convert.ABORT, {"request_ids": [
            convert.engine_request_id(rid) for rid in request_ids]})

    def _push(self, state_dict: Mapping[str, Tensor], version: int) -> None:
        """An update session (`weights.py`): a file reload or an NCCL broadcast."""
        tensors = with_tied_head(state_dict, self.model_config.tie_word_embeddings)
        update_session(self.http, lambda: self._pusher.push(tensors, version), version,
                       pause_mode=self.config.pause_mode)

    def _close_weights(self) -> None:
        """Shut the weight transfer down (best effort) and remove our weight files."""
        with contextlib.suppress(VLLMError):
            self._pusher.close()
        if self._own_dir is not None:
            shutil.rmtree(self._own_dir, ignore_errors=True)

    def _parse(self, p: Pending, answer: Any) -> Answer:
        where = f"request {p.request.request_id}"
        ch = convert.choice(answer, where)
        tokens, logprobs = convert.output_tokens(ch, where)
        return Answer(tokens=tokens, logprobs=logprobs,
                      versions=convert.response_versions(ch, len(tokens), p.version, where),
                      finish_reason=convert.finish_reason(ch, where))


def engine_from_options(checkpoint: str | Path, options: dict[str, Any]) -> VLLMEngine:
    """The recipe's `rollout.engine_factory` for vLLM (`engine_factory = "vllm"`): `options`
    are `VLLMConfig` fields, e.g. `engine_options = { url = "http://127.0.0.1:8000" }`."""
    return VLLMEngine.from_options(checkpoint, options)
