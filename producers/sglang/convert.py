"""SGLang's `/generate` JSON, converted into the engine's `GenerationResult` (and back for the
request). Pure functions over plain data, so every conversion is tested without a server.

Where each shape comes from in SGLang's source (python/sglang/srt/...):
- `routed_experts`: `layers/moe/routed_experts_capturer.py::get_routed_experts` returns host rows
  `[: seqlen - 1]` of an int32 buffer `[tokens, num_hidden_layers, num_experts_per_tok]`; the
  tokenizer manager puts base64 of its bytes in `meta_info["routed_experts"]`; with
  `routed_experts_start_len` S the rows are positions `[S, seqlen - 1)` (`managers/io_struct.py
  ::GenerateReqInput`). Every hidden layer has a row, dense layers too (unwritten there).
- `weight_versions`: `utils/weight_versions.py::add_weight_versions_to_meta_info`: a list of
  `{"version": str, "start": int, "end": int}` over output token indices, contiguous from 0,
  the last equal to `meta_info["weight_version"]`.
- `output_token_logprobs`: `[logprob, token_id, text | None]` per output token.
- `finish_reason`: `{"type": "stop" | "length" | "abort", ...}` or None while unfinished.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np
import numpy.typing as npt

from streamrl.hooks.generation import FinishReason, SamplingParams
from streamrl.producers.remote.http import ResponseError
from streamrl.schemas.trajectory import NARROW_EXPERT_LIMIT


class SGLangResponseError(ResponseError):
    """A server answer that breaks SGLang's documented shapes; `where` names the field."""


def generate_payload(request_id: str, prompt_tokens: npt.NDArray[np.int32],
                     params: SamplingParams, seed: int, *, return_routing: bool) -> dict[str, Any]:
    """The `/generate` body for one request. Routing is asked from the last prompt position on
    (`routed_experts_start_len = P - 1`): exactly the rows that sampled response tokens, so the
    prompt's rows never cross the wire."""
    sampling: dict[str, Any] = {
        "temperature": params.temperature, "top_p": params.top_p,
        "top_k": params.top_k if params.top_k else -1, "max_new_tokens": params.max_new_tokens,
        "stop_token_ids": list(params.stop_token_ids), "sampling_seed": seed,
        "no_stop_trim": True, "skip_special_tokens": False}
    payload: dict[str, Any] = {
        "rid": request_id, "input_ids": [int(t) for t in prompt_tokens],
        "sampling_params": sampling, "return_logprob": True, "stream": False}
    if return_routing:
        payload |= {"return_routed_experts": True,
                    "routed_experts_start_len": len(prompt_tokens) - 1}
    return payload


def output_tokens(meta: dict[str, Any], output_ids: list[int] | None
                  ) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.float32]]:
    """(response token ids, their sampling logprobs) from `output_token_logprobs`."""
    entries = meta.get("output_token_logprobs")
    if not isinstance(entries, list):
        raise SGLangResponseError("missing; send return_logprob=true",
                                  "meta_info.output_token_logprobs")
    try:
        logprobs = np.array([e[0] for e in entries], np.float32)
        tokens = np.array([e[1] for e in entries], np.int32)
    except (TypeError, IndexError, ValueError) as exc:
        raise SGLangResponseError(f"entries must be [logprob, token_id, text]: {exc}",
                                  "meta_info.output_token_logprobs") from None
    if output_ids is not None and list(map(int, output_ids)) != tokens.tolist():
        raise SGLangResponseError("token ids differ from output_ids", "output_token_logprobs")
    if not np.all(np.isfinite(logprobs)) or np.any(logprobs > 0):
        raise SGLangResponseError("logprobs must be finite and <= 0",
                                  "meta_info.output_token_logprobs")
    return tokens, logprobs


def finish_reason(meta: dict[str, Any]) -> FinishReason:
    raw = meta.get("finish_reason")
    kind = raw.get("type") if isinstance(raw, dict) else raw
    if kind in ("stop", "length", "abort"):
        return kind
    raise SGLangResponseError(f"unknown finish reason {raw!r}", "meta_info.finish_reason")


def parse_version(text: Any, where: str) -> int:
    """SGLang versions are strings; ours are the integers we pushed (`weight_version=str(v)`)."""
    try:
        version = int(str(text))
    except ValueError:
        raise SGLangResponseError(
            f"weight version {text!r} is not an integer: launch the server with "
            "--weight-version 0 and push updates through this adapter", where) from None
    if not 0 <= version < 1 << 32:
        raise SGLangResponseError(f"weight version {version} outside [0, 2**32)", where)
    return version


def response_versions(meta: dict[str, Any], num_tokens: int, submitted_version: int
                      ) -> npt.NDArray[np.uint32]:
    """Per-token versions from SGLang's spans. Without spans (an SGLang before them) a request
    that saw no update gets its one version; one that did is stamped with the version it was
    submitted under, the oldest that can have sampled any of its tokens (conservative for
    staleness, which counts from the oldest)."""
    spans = meta.get("weight_versions")
    if spans is None:
        final = parse_version(meta.get("weight_version", submitted_version),
                              "meta_info.weight_version")
        return np.full(num_tokens, submitted_version if final != submitted_version else final,
                       np.uint32)
    out = np.empty(num_tokens, np.uint32)
    expected_start = 0
    for i, span in enumerate(spans):
        where = f"meta_info.weight_versions[{i}]"
        try:
            start, end = int(span["start"]), int(span["end"])
        except (TypeError, KeyError, ValueError):
            raise SGLangResponseError("span must be {version, start, end}", where) from None
        if start != expected_start or end < start or end > num_tokens:
            raise SGLangResponseError(
                f"span [{start}, {end}) is not contiguous within {num_tokens} tokens", where)
        out[start:end] = parse_version(span.get("version"), where)
        expected_start = end
    if expected_start != num_tokens:
        raise SGLangResponseError(f"spans cover {expected_start} of {num_tokens} tokens",
                                  "meta_info.weight_versions")
    return out


def routed_experts(encoded: Any, *, num_prompt_tokens: int, num_response_tokens: int,
                   start_len: int, num_hidden_layers: int, moe_layers: tuple[int, ...],
                   top_k: int, num_experts: int) -> npt.NDArray[np.uint8] | npt.NDArray[np.uint16]:
    """SGLang's base64 int32 `[seqlen - 1 - start_len, num_hidden_layers, top_k]` as our column:
    `[num_response_tokens, num_moe_layers, top_k]`, uint8 up to 256 experts, else uint16.

    Row i of ours is SGLang's position P - 1 + i (the forward pass that sampled response token
    i; see streamrl/hooks/generation.py), i.e. row P - 1 + i - start_len of the payload."""
    where = "meta_info.routed_experts"
    if not isinstance(encoded, str):
        raise SGLangResponseError("missing; send return_routed_experts=true and launch the "
                                  "server with --enable-return-routed-experts", where)
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise SGLangResponseError("not valid base64", where) from None
    row = num_hidden_layers * top_k * 4
    num_rows = num_prompt_tokens + num_response_tokens - 1 - start_len
    if len(raw) != num_rows * row:
        raise SGLangResponseError(
            f"{len(raw)} bytes, expected {num_rows} rows x {num_hidden_layers} layers x "
            f"top-{top_k} int32 = {num_rows * row} (seqlen - 1 - routed_experts_start_len rows)",
            where)
    ids = np.frombuffer(raw, "<i4").reshape(num_rows, num_hidden_layers, top_k)
    first = num_prompt_tokens - 1 - start_len
    if first < 0:
        raise SGLangResponseError(f"routed_experts_start_len {start_len} is past the last "
                                  f"prompt position {num_prompt_tokens - 1}", where)
    ids = ids[first:first + num_response_tokens][:, list(moe_layers)]
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= num_experts):
        raise SGLangResponseError(f"expert ids outside [0, {num_experts})", where)
    dtype = np.uint8 if num_experts <= NARROW_EXPERT_LIMIT else np.uint16
    return np.ascontiguousarray(ids, dtype=dtype)
