"""`TorchEngine`: continuous-batching generation with streamrl's own model on a static KV cache.

    engine = TorchEngine(load_checkpoint(path), EngineConfig(max_batch_size=8, max_seq_len=1024))
    engine.add_request(GenerationRequest(request_id="r0", prompt_tokens=[...], params=...))
    while engine.has_unfinished():
        for result in engine.step():          # requests that finished in this step
            publish(result)
        if new_weights_arrived:
            engine.load_weights(state_dict, version)   # between steps; in-flight ones continue

One `step()` (1) decodes one token for every sequence already running, (2) frees the slots of
those that finished, (3) admits queued requests into free slots and prefills them, which samples
their first token. So every running sequence gains exactly one token per step, and a request
joins as soon as a slot frees up. Decode runs before prefill because the decode batch is a fixed
block of leading slots whose idle rows write scratch k/v at position 0 of their (free) slot;
prefill afterwards overwrites it for any sequence admitted there.

Weight updates: `load_weights` copies new tensors into the model in place between steps.
Sequences in flight keep their KV cache, computed by the older weights, and continue with the
new ones; each response token is stamped with the version whose forward pass sampled it
(`response_versions`). This is the usual in-flight update semantics of async RL engines.

On CUDA (`EngineConfig.decode`), decode steps of dense models run as fused Triton kernels
replayed from CUDA graphs (`producers/engine/cuda/`), and requests without top-k/top-p are
sampled by one kernel instead of the sorting torch sampler; the step API and the sampling
contract (per-request uniforms, logprob convention) are the same on every path.

Not thread-safe: call every method from one thread (an asyncio producer runs `step` in an
executor and applies weights between calls).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Mapping

import numpy as np
import torch
from torch import Tensor

from streamrl.hooks.generation import (
    FinishReason,
    GenerationRequest,
    GenerationResult,
    Timing,
    seed_from_request_id,
)
from streamrl.models import CausalLM, KVCache
from streamrl.producers.engine.packing import pack_weights
from streamrl.producers.engine.request import checked_prompt, run_to_completion
from streamrl.producers.engine.sampling import sample
from streamrl.producers.engine.slots import Sampler, SlotBuffers
from streamrl.producers.engine.weights import copy_hf_weights
from streamrl.recipe.engine import EngineConfig

_MAX_VERSION = 1 << 32  # response_versions are uint32 in the trajectory schema


class _Entry:
    """Host-side bookkeeping of one unfinished request."""

    __slots__ = ("first_token_at", "prompt", "queued_at", "request", "seed", "started_at")

    def __init__(self, request: GenerationRequest, prompt: np.ndarray, seed: int) -> None:
        self.request, self.prompt, self.seed = request, prompt, seed
        self.queued_at = time.time()
        self.started_at: float | None = None
        self.first_token_at: float | None = None


class TorchEngine:
    """Takes ownership of `model`: moves it to the config's device and dtype and updates it in
    place on `load_weights`. `version` is the weight version the model holds now."""

    def __init__(self, model: CausalLM, config: EngineConfig, *, version: int = 0) -> None:
        _check_version(version)
        self.config = config
        self.model = model.to(device=config.torch_device, dtype=config.torch_dtype).eval()
        # Weights in one buffer laid out like a cuda_ipc slot: a load is one copy, and the fused
        # decoder views q|k|v and gate|up in place. Before anything captures their addresses.
        pack_weights(self.model)
        mc = model.config
        self.cache = KVCache.for_model(
            mc,
            num_slots=config.max_batch_size,
            max_seq_len=config.max_seq_len,
            dtype=config.torch_dtype,
            device=config.torch_device,
        )
        self.buffers = SlotBuffers(
            num_slots=config.max_batch_size,
            max_seq_len=config.max_seq_len,
            vocab_size=mc.vocab_size,
            num_moe_layers=mc.num_moe_layers,
            top_k=mc.num_experts_per_tok,
            num_experts=mc.num_experts,
            device=config.torch_device,
        )
        self._fused = _fused_decoder(self.model, self.cache, self.buffers, config)
        self._version = version
        self._slots: list[_Entry | None] = [None] * config.max_batch_size
        self._waiting: deque[_Entry] = deque()
        self._aborted: list[GenerationResult] = []  # handed out by the next step()
        self._ids: set[str] = set()
        self._closed = False

    @property
    def version(self) -> int:
        """The weight version that samples the next tokens."""
        return self._version

    @property
    def num_experts(self) -> int | None:
        """Routed experts per MoE layer (recorded with the routing), None for a dense model."""
        return self.model.config.num_experts or None

    def add_request(self, request: GenerationRequest) -> None:
        """Queue a request; it starts in the first step with a free slot (FIFO)."""
        if self._closed:
            raise RuntimeError("the engine is closed")
        if request.request_id in self._ids:
            raise ValueError(f"request id {request.request_id!r} is already in the engine")
        prompt = checked_prompt(request, self.model.config.vocab_size, self.config.max_seq_len)
        seed = request.params.seed
        seed = seed_from_request_id(request.request_id) if seed is None else seed
        self._waiting.append(_Entry(request, prompt, seed))
        self._ids.add(request.request_id)

    def has_unfinished(self) -> bool:
        """True while some request has not been returned by `step()` yet."""
        return bool(self._ids)

    def step(self) -> list[GenerationResult]:
        """Decode one token for every running sequence, admit and prefill waiting requests;
        returns the requests that finished (or were aborted) since the last step."""
        with torch.inference_mode():
            finished, self._aborted = self._aborted, []
            finished += self._decode()
            finished += self._prefill(self._admit())
        for result in finished:
            self._ids.discard(result.request_id)
        return finished

    def abort(self, request_id: str) -> bool:
        """Stop a queued or running request; the next `step()` returns it with finish_reason
        "abort" and the tokens sampled so far. False if no such unfinished request."""
        for entry in self._waiting:
            if entry.request.request_id == request_id:
                self._waiting.remove(entry)
                # Aborted while queued: it never got a slot, its response is empty.
                empty = self.buffers.empty_response()
                self._aborted.append(self._result(entry, empty, "abort"))
                return True
        for slot, entry in enumerate(self._slots):
            if entry is not None and entry.request.request_id == request_id:
                self._aborted += self._finish([(slot, "abort")])
                return True
        return False

    def load_weights(self, state_dict: Mapping[str, Tensor], version: int) -> None:
        """Replace the weights (HF names, as `streamrl.models.checkpoint`) between steps.
        Running sequences keep their KV cache and continue; their next tokens carry `version`."""
        _check_version(version)
        if version <= self._version:
            raise ValueError(
                f"weight version {version} is not newer than the loaded version {self._version}"
            )
        with torch.inference_mode():
            copy_hf_weights(self.model, state_dict)
        self._version = version

    def close(self) -> None:
        """Drop unfinished requests and free the KV cache and CUDA graphs; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._waiting.clear()
        self._aborted.clear()
        self._ids.clear()
        self._slots = [None] * self.config.max_batch_size
        self._fused = None
        del self.cache, self.buffers

    def generate(self, requests: Iterable[GenerationRequest]) -> list[GenerationResult]:
        """Run `requests` to completion on an idle engine; results in request order."""
        if self.has_unfinished():
            raise ValueError("generate() needs an idle engine; use add_request/step instead")
        return run_to_completion(self, requests)

    def _decode(self) -> list[GenerationResult]:
        # Rows are the leading block of slots up to the last busy one (admission fills the lowest
        # free slot first, so it stays compact); a CUDA-graph version pads it to a captured size.
        busy = [s for s, entry in enumerate(self._slots) if entry is not None]
        if not busy:
            return []
        if self._fused is not None:
            rows, status = self._fused.step(busy[-1] + 1, self._version, self._truncated())
            return self._collect(rows, status)
        b = self.buffers
        rows = torch.arange(busy[-1] + 1, device=b.tokens.device)  # [n]
        positions = torch.where(b.active[rows], b.length[rows] - 1, 0)  # [n] last token
        tokens = b.tokens[rows, positions]  # [n]
        out = self.model(tokens[:, None], positions[:, None], kv_cache=self.cache, slots=rows)
        routed = None if out.routed_experts is None else out.routed_experts[:, 0]
        status = b.sample_next(rows, positions, out.logits[:, 0], routed, self._version)
        return self._collect(rows, status)

    def _admit(self) -> list[int]:
        slots, entries = [], []
        for slot, entry in enumerate(self._slots):
            if entry is None and self._waiting:
                entry = self._slots[slot] = self._waiting.popleft()
                entry.started_at = time.time()
                slots.append(slot)
                entries.append(entry)
        if slots:
            self.buffers.admit(slots, [e.prompt for e in entries],
                               [e.request.params for e in entries], [e.seed for e in entries])
        return slots

    def _prefill(self, slots: list[int]) -> list[GenerationResult]:
        # One right-padded forward over the new prompts; pad tokens write k/v past their row's
        # end, which that row's decode steps overwrite before reading (see kv_cache.py).
        if not slots:
            return []
        b = self.buffers
        rows = torch.tensor(slots, device=b.tokens.device)  # [n]
        lengths = b.length[rows]  # [n]
        T = int(lengths.max())
        last = lengths - 1  # [n] position of each prompt's last token
        idx = torch.arange(len(slots), device=rows.device)
        if self._fused is not None:
            hidden, routed = self._fused.prefill(rows, b.tokens[rows, :T])  # [n, T, H]
        else:
            positions = torch.arange(T, device=rows.device).expand(len(slots), T)  # [n, T]
            out = self.model(
                b.tokens[rows, :T], positions, kv_cache=self.cache, slots=rows, return_hidden=True
            )
            hidden, routed = out.hidden, out.routed_experts
        routed = None if routed is None else routed[idx, last]  # [n, num_moe_layers, k]
        logits = self.model.logits(hidden[idx, last])  # [n, V]
        status = b.sample_next(rows, last, logits, routed, self._version, self._sampler())
        now = time.time()
        for slot in slots:
            self._slots[slot].first_token_at = now  # type: ignore[union-attr]
        return self._collect(rows, status)

    def _truncated(self) -> bool:
        """Whether some running request samples with top-k or top-p."""
        return any(
            e is not None and (e.request.params.top_k > 0 or e.request.params.top_p < 1)
            for e in self._slots
        )

    def _sampler(self) -> Sampler:
        if self._fused is None or self._truncated():
            return sample
        from streamrl.producers.engine.cuda.sampling import sample_untruncated

        return sample_untruncated

    def _collect(self, rows: Tensor, status: Tensor) -> list[GenerationResult]:
        # status: [n] from SlotBuffers.sample_next; the one host sync of a step.
        reasons: tuple[FinishReason, ...] = ("length", "stop")
        slots = rows.tolist()
        return self._finish([(slots[i], reasons[s - 1]) for i, s in enumerate(status.tolist())
                             if s])

    def _finish(self, done: list[tuple[int, FinishReason]]) -> list[GenerationResult]:
        """Results of the sequences in these slots, which become free."""
        if not done:
            return []
        slots = [slot for slot, _ in done]
        entries = [self._slots[slot] for slot in slots]
        assert all(entries), f"slots {slots} hold no sequence"
        fields = self.buffers.responses(slots, [len(e.prompt) for e in entries])  # type: ignore[union-attr]
        results = [self._result(entry, f, reason)  # type: ignore[arg-type]
                   for entry, f, (_, reason) in zip(entries, fields, done, strict=True)]
        for slot in slots:
            self._slots[slot] = None
        self.buffers.release(slots)
        return results

    def _result(self, entry: _Entry, fields: dict, reason: FinishReason) -> GenerationResult:
        now = time.time()
        started = entry.started_at or now
        timing = Timing(
            queued_at=entry.queued_at,
            started_at=started,
            first_token_at=entry.first_token_at or now,
            finished_at=now,
        )
        return GenerationResult(
            request_id=entry.request.request_id,
            prompt_tokens=entry.prompt,
            finish_reason=reason,
            seed=entry.seed,
            timing=timing,
            **fields,
        )


def _fused_decoder(model: CausalLM, cache: KVCache, buffers: SlotBuffers, config: EngineConfig):
    """The fused decoder the config asks for, or None for the eager model forward."""
    on_cuda = config.torch_device.type == "cuda"
    if config.decode == "eager" or (config.decode == "auto" and not on_cuda):
        return None  # no Triton import on the CPU path
    from streamrl.producers.engine import cuda
    from streamrl.producers.engine.cuda.decoder import FusedDecoder, unsupported_reason

    reason = unsupported_reason(model, config.max_seq_len)
    if config.decode == "auto" and reason is not None:
        return None
    if reason is not None:
        raise ValueError(f"decode='fused' does not support this model: {reason}")
    if not on_cuda and not cuda.INTERPRET:
        raise ValueError(
            f"decode='fused' needs a CUDA device (got {config.device!r}); on CPU it runs only "
            "under Triton's interpreter (TRITON_INTERPRET=1), which is for tests"
        )
    return FusedDecoder(model, cache, buffers, graphs=config.cuda_graphs)


def _check_version(version: int) -> None:
    if not 0 <= version < _MAX_VERSION:
        raise ValueError(f"weight version must be in [0, 2**32), got {version}")
