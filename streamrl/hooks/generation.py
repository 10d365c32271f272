"""What goes into a rollout engine (`GenerationRequest`, `SamplingParams`) and what comes out
(`GenerationResult`): plain data, the same for every engine behind `streamrl.hooks.engine.Engine`.

Seeds. A request's sampling is driven by one 64-bit seed: `SamplingParams.seed`, or
`seed_from_request_id(request_id)` when none is given; the result reports the seed used, so a
replay can reproduce the sample.

Logprobs. The logprob of a sampled token is `log_softmax(logits / T)` at that token, with the
request's temperature T applied but *before* top-k/top-p truncation (T = 1 for greedy requests).
That is what the trainer recomputes (`streamrl.models.token_logprobs(..., temperature=T)`), so
importance ratios compare like with like; the truncated distribution's logprob would need the
trainer to re-apply the truncation and would be -inf for tokens the new policy cuts.

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

import hashlib
from typing import Literal

import msgspec
import numpy as np
import numpy.typing as npt

FinishReason = Literal["stop", "length", "abort"]

_MAX_SEED = 1 << 64


class SamplingParams(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """How one request is sampled. The sampled token's logprob is always returned (see the
    module docstring for which distribution it is taken from)."""

    temperature: float = 1.0
    """Softmax temperature; 0 means greedy (argmax of the logits)."""
    top_p: float = 1.0
    """Nucleus sampling: keep the most likely tokens until their mass reaches top_p (1 = off)."""
    top_k: int = 0
    """Keep only the top_k most likely tokens (0 = off)."""
    max_new_tokens: int = 256
    """Most response tokens to generate; reaching it ends the request with "length"."""
    stop_token_ids: tuple[int, ...] = ()
    """Sampling any of these ends the request with "stop" (the stop token stays in the response)."""
    seed: int | None = None
    """Seeds this request's generator, in [0, 2**64). None derives it from the request id
    (`seed_from_request_id`), so samples of one prompt differ and a replay reproduces them;
    the seed used is reported in `GenerationResult.seed` either way."""

    def __post_init__(self) -> None:
        if not self.temperature >= 0:  # also rejects NaN
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (1 = off), got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if any(t < 0 for t in self.stop_token_ids):
            raise ValueError(f"stop_token_ids must be token ids >= 0, got {self.stop_token_ids}")
        if self.seed is not None and not 0 <= self.seed < _MAX_SEED:
            raise ValueError(f"seed must be in [0, 2**64), got {self.seed}")


def seed_from_request_id(request_id: str) -> int:
    """A stable 64-bit seed from a request id (blake2b, not Python's salted `hash`)."""
    return int.from_bytes(hashlib.blake2b(request_id.encode(), digest_size=8).digest(), "little")


class GenerationRequest(msgspec.Struct, kw_only=True, frozen=True):
    request_id: str
    """Unique among the engine's unfinished requests; names the result."""
    prompt_tokens: list[int] | npt.NDArray[np.integer]
    """[num_prompt_tokens] token ids, at least one."""
    params: SamplingParams = msgspec.field(default_factory=SamplingParams)
    """How to sample this request."""
    adapter: str | None = None
    """The LoRA adapter to generate with, by the id it was loaded under
    (`TorchEngine.load_adapter`); None: the engine's current weights (a LoRA run's own
    adapter). Requests of different adapters share one batch."""


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
    # top-k/top-p truncation (temperature 1 for greedy requests); see the module docstring.
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
