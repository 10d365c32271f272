"""vLLM's token-in/token-out generate JSON, converted into the engine's `GenerationResult` (and
back for the request). Pure functions over plain data, so every conversion is tested without a
server, and the answers of a real server go through the same code (tests/vllm/).

The endpoint is `POST /inference/v1/generate` of vLLM's OpenAI-compatible server (vllm
0.32: `entrypoints/scale_out/token_in_token_out/`): prompt token ids in, sampled token ids,
their logprobs and the weight version of every token out, with no tokenizer on either side.
Why not `/v1/completions` with `return_tokens_as_token_ids`: it answers token ids as
"token_id:N" strings and reports no weight versions, so a request that crossed a weight update
could only be stamped with its submit-time version.

Shapes (vllm/entrypoints/scale_out/token_in_token_out/protocol.py):
- request: `GenerateRequest{request_id, token_ids, sampling_params, output_mode, stream}`;
  `sampling_params` is `vllm.SamplingParams` (`max_tokens`, `stop_token_ids`, `seed`,
  `logprobs`: 0 = the sampled token only, `ignore_eos`, `detokenize`).
- answer: `choices[0]` = `GenerateTokensChoice{token_ids, logprobs.content[{token_id, logprob}],
  finish_reason, weight_versions[{version, start, end}]}`. A sampled token the engine had no
  logprob for is sent as -9999.0 (`_create_tokens_logprobs`): refused here, never trained on.
- the engine's own request id is "generate-tokens-" + ours (`serve_tokens`); aborts name it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from streamrl.hooks.generation import FinishReason, SamplingParams
from streamrl.producers.remote.http import ResponseError

GENERATE = "/inference/v1/generate"
ABORT = "/inference/v1/abort_requests"
_ID_PREFIX = "generate-tokens-"
_NO_LOGPROB = -9999.0  # vLLM's placeholder for a missing or -inf logprob
_SEED_MOD = 1 << 63  # vLLM seeds a torch.Generator: keep it in int64


class VLLMResponseError(ResponseError):
    """A server answer that breaks vLLM's documented shapes; `where` names the field."""


def engine_request_id(request_id: str) -> str:
    """The id vLLM's engine knows our request by (what `/abort_requests` takes)."""
    return _ID_PREFIX + request_id


def server_seed(seed: int) -> int:
    """Our 64-bit seed as the int64 vLLM seeds with (the same seed always maps the same way)."""
    return seed % _SEED_MOD


def generate_payload(request_id: str, prompt_tokens: npt.NDArray[np.int32],
                     params: SamplingParams, seed: int) -> dict[str, Any]:
    """The generate body for one request. `ignore_eos`: like the embedded engine, only
    `stop_token_ids` end a request (the producer passes the tokenizer's eos ids there)."""
    sampling = {
        "temperature": params.temperature, "top_p": params.top_p, "top_k": params.top_k,
        "max_tokens": params.max_new_tokens, "stop_token_ids": list(params.stop_token_ids),
        "seed": server_seed(seed), "logprobs": 0, "ignore_eos": True, "detokenize": False,
        "skip_special_tokens": False}
    return {"request_id": request_id, "token_ids": [int(t) for t in prompt_tokens],
            "sampling_params": sampling, "output_mode": "tokens", "stream": False}


def choice(answer: Any, where: str) -> dict[str, Any]:
    """The one choice of a generate answer."""
    choices = answer.get("choices") if isinstance(answer, dict) else None
    if not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0], dict):
        raise VLLMResponseError("expected exactly one choice", f"{where}: choices")
    return choices[0]


def output_tokens(ch: dict[str, Any], where: str
                  ) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.float32]]:
    """(response token ids, their sampling logprobs), checked against each other."""
    ids = ch.get("token_ids") or []
    content = (ch.get("logprobs") or {}).get("content")
    if content is None:
        content = [] if not ids else None
    if not isinstance(ids, list) or not isinstance(content, list) or len(content) != len(ids):
        raise VLLMResponseError(f"{len(ids) if isinstance(ids, list) else '?'} token ids but "
                                "not one logprob entry per token", f"{where}: logprobs.content")
    tokens = np.asarray(ids, dtype=np.int64)
    pairs = zip(content, ids, strict=True)
    if any(not isinstance(e, dict) or e.get("token_id") != t for e, t in pairs):
        raise VLLMResponseError("logprob entries name other tokens than token_ids",
                                f"{where}: logprobs.content")
    logprobs = np.asarray([e.get("logprob") for e in content], dtype=np.float64)
    if len(logprobs) and not (np.isfinite(logprobs).all() and (logprobs <= 0).all()
                              and (logprobs > _NO_LOGPROB).all()):
        raise VLLMResponseError(f"logprobs must be finite and <= 0, got {logprobs.tolist()}",
                                f"{where}: logprobs.content")
    if len(tokens) and int(tokens.min()) < 0:
        raise VLLMResponseError("negative token id", f"{where}: token_ids")
    return tokens.astype(np.int32), logprobs.astype(np.float32)


def response_versions(ch: dict[str, Any], num_tokens: int, submitted: int, where: str
                      ) -> npt.NDArray[np.uint32]:
    """One version per response token from vLLM's weight-version spans (contiguous from 0 over
    the output tokens, labels set by `/update_weight_version` to our integers). Without spans
    (none sampled, or a server that reports none) every token gets `submitted`, the oldest
    version that can have sampled it: conservative for staleness."""
    spans = ch.get("weight_versions")
    if not spans:
        return np.full(num_tokens, submitted, np.uint32)
    out = np.empty(num_tokens, np.uint32)
    at = 0
    for span in spans:
        try:
            version, start, end = int(span["version"]), int(span["start"]), int(span["end"])
        except (KeyError, TypeError, ValueError):
            raise VLLMResponseError(
                f"span {span!r} is not {{version: integer string, start, end}} (versions are "
                "our integers: the adapter labels every update)", f"{where}: weight_versions"
            ) from None
        if start != at or end < start or version < 0:
            raise VLLMResponseError(f"spans must cover the tokens in order, got {spans!r}",
                                    f"{where}: weight_versions")
        out[start:end] = version
        at = end
    if at != num_tokens:
        raise VLLMResponseError(f"spans cover {at} of {num_tokens} tokens",
                                f"{where}: weight_versions")
    return out


def finish_reason(ch: dict[str, Any], where: str) -> FinishReason:
    reason = ch.get("finish_reason")
    if reason in ("stop", "length", "abort"):
        return reason
    raise VLLMResponseError(f"unknown finish_reason {reason!r}", f"{where}: finish_reason")
