"""Per-slot tensor state of the running sequences: what the decode step reads and writes.

Row s of every buffer belongs to the sequence in KV-cache slot s. Per-position buffers are
indexed by position in the sequence (prompt first), so the response of a sequence of prompt
length P and current length N is `[P:N]` of each. Everything a step does to them is a batched
tensor op over the step's rows; Python only touches a sequence when it is admitted or finishes.
That keeps the decode step fixed-shape and free of host work per token, as a CUDA graph needs.
Stale rows of freed slots are never cleared: `admit` overwrites whatever a sequence will read.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from producers.engine.sampling import SamplingParams, request_uniforms, sample
from schemas.trajectory import NARROW_EXPERT_LIMIT


class SlotBuffers:
    def __init__(
        self,
        *,
        num_slots: int,
        max_seq_len: int,
        vocab_size: int,
        num_moe_layers: int,
        top_k: int,
        num_experts: int,
        device: torch.device,
    ) -> None:
        S, L = num_slots, max_seq_len
        zeros = lambda *shape, dtype: torch.zeros(shape, dtype=dtype, device=device)  # noqa: E731
        self.tokens = zeros(S, L, dtype=torch.int64)  # [S, L] prompt + response so far
        self.length = zeros(S, dtype=torch.int64)  # [S] prompt + response tokens so far
        self.limit = zeros(S, dtype=torch.int64)  # [S] length at which "length" ends it
        self.active = zeros(S, dtype=torch.bool)  # [S] slot holds a running sequence
        self.temperature = zeros(S, dtype=torch.float32)  # [S]
        self.top_p = zeros(S, dtype=torch.float32)  # [S]
        self.top_k = zeros(S, dtype=torch.int64)  # [S]
        self.stop = zeros(S, vocab_size, dtype=torch.bool)  # [S, V] True at stop token ids
        self.uniforms = zeros(S, L, dtype=torch.float32)  # [S, L] u of the token at each position
        self.logprobs = zeros(S, L, dtype=torch.float32)  # [S, L] of the token at each position
        self.versions = zeros(S, L, dtype=torch.int64)  # [S, L] weights that sampled it
        self.routed: Tensor | None = None  # [S, L, num_moe_layers, top_k]; see request.py
        self.routed_np: type = np.uint8
        if num_moe_layers:
            # uint8 covers the schema's narrow column; torch lacks uint16 indexing, so wide
            # routing is held as int32 and narrowed to uint16 on the way out.
            narrow = num_experts <= NARROW_EXPERT_LIMIT
            self.routed_np = np.uint8 if narrow else np.uint16
            self.routed = zeros(
                S, L, num_moe_layers, top_k, dtype=torch.uint8 if narrow else torch.int32
            )

    def admit(self, slot: int, prompt: Tensor, params: SamplingParams, seed: int) -> None:
        """Start a sequence in `slot`; its first token comes from a prefill of `prompt`."""
        # prompt: [P] int64, on the buffers' device
        P, L = len(prompt), self.tokens.shape[1]
        limit = min(P + params.max_new_tokens, L)
        self.tokens[slot, :P] = prompt
        self.length[slot] = P
        self.limit[slot] = limit
        self.temperature[slot] = params.temperature
        self.top_p[slot] = params.top_p
        self.top_k[slot] = params.top_k
        self.stop[slot] = False
        self.stop[slot, list(params.stop_token_ids)] = True
        # The token at position p is response token p - P, chosen by the request's u_{p-P}.
        self.uniforms[slot, P:limit] = request_uniforms(seed, limit - P).to(self.uniforms.device)
        self.active[slot] = True

    def sample_next(
        self, rows: Tensor, positions: Tensor, logits: Tensor, routed: Tensor | None, version: int
    ) -> Tensor:
        """Sample the token after `positions` for each row and record it; returns each row's
        status: 0 running (or inactive), 1 finished by "length", 2 finished by "stop"."""
        # rows, positions: [n]; logits: [n, V] computed at `positions`
        # routed: [n, num_moe_layers, top_k] of that same forward pass, or None -> status: [n]
        new = positions + 1  # [n] position of the sampled token
        u = self.uniforms[rows, new]
        tok, logp = sample(logits, self.temperature[rows], self.top_k[rows], self.top_p[rows], u)
        self.tokens[rows, new] = tok
        self.logprobs[rows, new] = logp
        self.versions[rows, new] = version
        if self.routed is not None and routed is not None:
            self.routed[rows, new] = routed.to(self.routed.dtype)
        self.length[rows] = new + 1
        stopped = self.stop[rows, tok]  # [n]
        ended = stopped | (new + 1 >= self.limit[rows])
        return (ended & self.active[rows]).long() * (1 + stopped.long())

    def response(self, slot: int, prompt_len: int) -> dict[str, np.ndarray | None]:
        """Copy out the response so far of the sequence in `slot` (GenerationResult fields)."""
        end = int(self.length[slot])
        routed = None
        if self.routed is not None:
            routed = self.routed[slot, prompt_len:end].cpu().numpy().astype(self.routed_np)
        return {
            "response_tokens": self.tokens[slot, prompt_len:end].cpu().numpy().astype(np.int32),
            "logprobs": self.logprobs[slot, prompt_len:end].cpu().numpy().copy(),  # not a view
            "response_versions": self.versions[slot, prompt_len:end]
            .cpu()
            .numpy()
            .astype(np.uint32),
            "routed_experts": routed,
        }

    def empty_response(self) -> dict[str, np.ndarray | None]:
        """`response` of a request that never got a slot."""
        routed = None
        if self.routed is not None:
            routed = np.zeros((0, *self.routed.shape[2:]), self.routed_np)
        return {
            "response_tokens": np.zeros(0, np.int32),
            "logprobs": np.zeros(0, np.float32),
            "response_versions": np.zeros(0, np.uint32),
            "routed_experts": routed,
        }

    def release(self, slot: int) -> None:
        self.active[slot] = False
