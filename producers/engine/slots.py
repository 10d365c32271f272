"""Per-slot tensor state of the running sequences: what the decode step reads and writes.

Row s of every buffer belongs to the sequence in KV-cache slot s. Per-position buffers are
indexed by position in the sequence (prompt first), so the response of a sequence of prompt
length P and current length N is `[P:N]` of each. Everything a step does to them is a batched
tensor op over the step's rows; Python only touches a sequence when it is admitted or finishes.
That keeps the decode step fixed-shape and free of host work per token, as a CUDA graph needs.
Stale rows of freed slots are never cleared: `admit` overwrites whatever a sequence will read.
Column `max_seq_len` of each per-position buffer is scratch: rows of a decode batch that hold no
running sequence (free, still prefilling, preempted) record their garbage sample there, so a
fixed-shape step never touches their tokens.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from streamrl.hooks.generation import SamplingParams
from streamrl.producers.engine.sampling import request_uniforms, sample
from streamrl.schemas.trajectory import NARROW_EXPERT_LIMIT

# (logits, temperature, top_k, top_p, uniforms) -> (tokens, logprobs); see `sampling.sample`.
Sampler = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]


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
        S, L = num_slots, max_seq_len + 1  # + the scratch column
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
        self.routed: Tensor | None = None  # [S, L, num_moe_layers, top_k]; hooks/generation.py
        self.routed_np: type = np.uint8
        if num_moe_layers:
            # uint8 covers the schema's narrow column; torch lacks uint16 indexing, so wide
            # routing is held as int32 and narrowed to uint16 on the way out.
            narrow = num_experts <= NARROW_EXPERT_LIMIT
            self.routed_np = np.uint8 if narrow else np.uint16
            self.routed = zeros(
                S, L, num_moe_layers, top_k, dtype=torch.uint8 if narrow else torch.int32
            )

    def admit(
        self, slots: list[int], prompts: list[np.ndarray], params: list[SamplingParams],
        seeds: list[int],
    ) -> None:
        """Start one sequence per slot; their first tokens come from a prefill of the prompts.
        Everything is assembled on the host and lands in a few batched writes (admitting 128
        requests one by one cost ~100 ms of small device ops on a GPU)."""
        # prompts: n x [P_i] integer arrays
        n, L = len(slots), self.tokens.shape[1] - 1
        lengths = [len(p) for p in prompts]
        limits = [min(P + q.max_new_tokens, L) for P, q in zip(lengths, params, strict=True)]
        tokens = np.zeros((n, max(lengths)), np.int64)
        uniforms = torch.zeros(n, L + 1)
        stop_rows: list[int] = []
        stop_ids: list[int] = []
        for i, (prompt, P, limit, q) in enumerate(zip(prompts, lengths, limits, params,
                                                     strict=True)):
            tokens[i, :P] = prompt
            # The token at position p is response token p - P, chosen by the request's u_{p-P}.
            uniforms[i, P:limit] = request_uniforms(seeds[i], limit - P)
            stop_rows += [slots[i]] * len(q.stop_token_ids)
            stop_ids += list(q.stop_token_ids)
        device = self.tokens.device
        rows = torch.tensor(slots, device=device)
        self.tokens[rows, : tokens.shape[1]] = torch.from_numpy(tokens).to(device)
        self.length[rows] = torch.tensor(lengths, device=device)
        self.limit[rows] = torch.tensor(limits, device=device)
        self.temperature[rows] = torch.tensor([q.temperature for q in params], device=device)
        self.top_p[rows] = torch.tensor([q.top_p for q in params], device=device)
        self.top_k[rows] = torch.tensor([q.top_k for q in params], device=device)
        self.stop[rows] = False
        if stop_rows:
            self.stop[stop_rows, stop_ids] = True
        self.uniforms[rows] = uniforms.to(device)
        self.active[rows] = False  # until its prefill completes

    def sample_next(
        self,
        rows: Tensor,
        positions: Tensor,
        logits: Tensor,
        routed: Tensor | None,
        version: int | Tensor,
        sampler: Sampler = sample,
    ) -> Tensor:
        """Sample the token after `positions` for each row and record it; returns each row's
        status: 0 running (or inactive), 1 finished by "length", 2 finished by "stop".
        `version` may be a device scalar, so that a captured CUDA graph reads it on replay."""
        # rows, positions: [n]; logits: [n, V] computed at `positions`
        # routed: [n, num_moe_layers, top_k] of that same forward pass, or None -> status: [n]
        active = self.active[rows]
        new = torch.where(active, positions + 1, self.tokens.shape[1] - 1)  # [n] its position
        u = self.uniforms[rows, new]
        tok, logp = sampler(logits, self.temperature[rows], self.top_k[rows], self.top_p[rows], u)
        self.tokens[rows, new] = tok
        self.logprobs[rows, new] = logp
        self.versions[rows, new] = version
        if self.routed is not None and routed is not None:
            self.routed[rows, new] = routed.to(self.routed.dtype)
        self.length[rows] = torch.where(active, new + 1, self.length[rows])
        stopped = self.stop[rows, tok]  # [n]
        ended = stopped | (new + 1 >= self.limit[rows])
        return (ended & active).long() * (1 + stopped.long())

    def responses(
        self, slots: list[int], prompt_lens: list[int]
    ) -> list[dict[str, np.ndarray | None]]:
        """Copy out the responses so far of the sequences in `slots` (GenerationResult fields),
        with one device-to-host copy per buffer for all of them."""
        rows = torch.tensor(slots, device=self.tokens.device)
        ends = self.length[rows].tolist()
        tokens = self.tokens[rows].cpu().numpy()
        logprobs = self.logprobs[rows].cpu().numpy()
        versions = self.versions[rows].cpu().numpy()
        routed = None if self.routed is None else self.routed[rows].cpu().numpy()
        out = []
        for i, (P, end) in enumerate(zip(prompt_lens, ends, strict=True)):
            out.append({
                "response_tokens": tokens[i, P:end].astype(np.int32),
                "logprobs": logprobs[i, P:end].copy(),  # not a view of the batch copy
                "response_versions": versions[i, P:end].astype(np.uint32),
                "routed_experts": None if routed is None
                else routed[i, P:end].astype(self.routed_np),
            })
        return out

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

    def release(self, slots: list[int]) -> None:
        self.active[torch.tensor(slots, device=self.active.device)] = False
