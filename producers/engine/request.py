"""What goes into the engine (`GenerationRequest`) and what comes out (`GenerationResult`).

Routing record (MoE models). Write P = num prompt tokens, R = num response tokens and
x_0..x_{P+R-1} = prompt + response. Token x_{P+i} (response token i) is sampled from the logits
the forward pass computes at position P-1+i, whose input token is x_{P-1+i}: the last prompt
token for i = 0 (prefill), response token i-1 otherwise (decode). `routed_experts[i]` is the
routing of that same forward pass at position P-1+i, so row i of `logprobs`, `response_versions`
and `routed_experts` all describe one and the same computation.

Why: the trainer's teacher-forced forward over x_0..x_{P+R-1} scores response token i at exactly
position P-1+i, so forcing `routed_experts` onto positions P-1..P+R-2 replays the engine's routing
wherever a scored logit is computed (the last response token is never fed back, so nothing was
routed for position P+R-1, and nothing is scored there). Routing of prompt positions 0..P-2 is not
recorded (the trajectory schema has one row per response token): those are fixed inputs that
the trainer routes itself (the same choices for the same weights, up to fp32 near-ties); under
an in-flight weight update their KV came from older weights anyway, which no replay reproduces.
Trainer recipe: `CausalLM.forward(..., forced_routing=F, routing_mask=M)` with F[P-1+i] =
`routed_experts[i]` and M True exactly on P-1..P+R-2 (`tests/engine/engine_util.py` does it).
"""

from __future__ import annotations

from typing import Literal

import msgspec
import numpy as np
import numpy.typing as npt
from streamrl.producers.engine.sampling import SamplingParams

FinishReason = Literal["stop", "length", "abort"]


class GenerationRequest(msgspec.Struct, kw_only=True, frozen=True):
    request_id: str
    """Unique among the engine's unfinished requests; names the result."""
    prompt_tokens: list[int] | npt.NDArray[np.integer]
    """[num_prompt_tokens] token ids, at least one."""
    params: SamplingParams = msgspec.field(default_factory=SamplingParams)
    """How to sample this request."""


class Timing(msgspec.Struct, kw_only=True, frozen=True):
    """Wall-clock times (`time.time()` seconds) of a request's life in the engine."""

    queued_at: float
    """`add_request` was called."""
    started_at: float
    """The request got a KV slot and its prefill began (equals `finished_at` if aborted queued)."""
    first_token_at: float
    """Its first response token was sampled (equals `finished_at` if it got none)."""
    finished_at: float
    """It finished (stop, length or abort)."""


class GenerationResult(msgspec.Struct, kw_only=True, frozen=True, eq=False):
    """One finished request. `eq=False`: numpy fields make field-wise `==` ambiguous."""

    request_id: str
    prompt_tokens: npt.NDArray[np.int32]  # [num_prompt_tokens]
    response_tokens: npt.NDArray[np.int32]  # [num_response_tokens], stop token included
    # [num_response_tokens] log_softmax(logits / temperature) of each sampled token, before
    # top-k/top-p truncation (temperature 1 for greedy requests); see `sampling.py`.
    logprobs: npt.NDArray[np.float32]
    response_versions: npt.NDArray[np.uint32]  # [num_response_tokens] weights that sampled each
    # [num_response_tokens, num_moe_layers, top_k], uint8 (<= 256 experts) else uint16; row i is
    # the routing of the forward pass that sampled token i (module docstring); None for dense.
    routed_experts: npt.NDArray[np.uint8] | npt.NDArray[np.uint16] | None
    finish_reason: FinishReason
    seed: int
    """The seed that drove sampling (given, or derived from the request id)."""
    timing: Timing

    @property
    def num_response_tokens(self) -> int:
        return len(self.response_tokens)


def checked_prompt(
    request: GenerationRequest, vocab_size: int, max_seq_len: int
) -> npt.NDArray[np.int32]:
    """The request's prompt as int32; raises `ValueError` for prompts or stop ids the engine
    cannot serve."""
    name, prompt = request.request_id, np.asarray(request.prompt_tokens)
    if prompt.ndim != 1 or len(prompt) == 0 or not np.issubdtype(prompt.dtype, np.integer):
        raise ValueError(
            f"{name}: prompt_tokens must be a non-empty 1-D list of token ids, "
            f"got shape {prompt.shape} dtype {prompt.dtype}"
        )
    if len(prompt) >= max_seq_len:
        raise ValueError(
            f"{name}: a prompt of {len(prompt)} tokens leaves no room for a response within "
            f"max_seq_len={max_seq_len}"
        )
    ids = np.concatenate([prompt, np.asarray(request.params.stop_token_ids, np.int64)])
    if int(ids.min()) < 0 or int(ids.max()) >= vocab_size:
        raise ValueError(
            f"{name}: prompt or stop token ids lie outside the model's vocabulary [0, {vocab_size})"
        )
    return prompt.astype(np.int32)
