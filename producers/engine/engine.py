"""`TorchEngine`: continuous-batching generation with streamrl's own model on a paged KV cache.

    engine = TorchEngine(load_checkpoint(path), EngineConfig(max_batch_size=8, max_seq_len=1024))
    engine.add_request(GenerationRequest(request_id="r0", prompt_tokens=[...], params=...))
    while engine.has_unfinished():
        for result in engine.step():          # requests that finished in this step
            publish(result)
        if new_weights_arrived:
            engine.load_weights(state_dict, version)   # between steps; in-flight ones continue

One `step()` (1) plans the step (`scheduler.py`: KV blocks for every running sequence,
preempting the newest when the pool runs dry; prefill chunks within a per-step token budget;
queued requests admitted while slots and blocks last, samples of one prompt sharing its
blocks), (2) decodes one token for every running sequence, (3) prefills the planned chunks,
sampling the first token of each prompt that completes. So every running sequence gains
exactly one token per step, a long prompt is prefilled a chunk per step beside them instead of
stalling them, and a request joins as soon as a slot and blocks are free. Rows of a decode
batch that hold no running sequence write their k/v into the scratch block (`blocks.py`).

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
from streamrl.models.fp8_linear import fp8_layers, load_fp8_state, quantize_model
from streamrl.models.lora import is_adapter
from streamrl.models.quant import Int4Spec, load_int4, serve_int4
from streamrl.producers.engine.adapters import RUN_ADAPTER, Adapters
from streamrl.producers.engine.blocks import BlockPool
from streamrl.producers.engine.packing import pack_weights
from streamrl.producers.engine.request import checked_prompt, run_to_completion
from streamrl.producers.engine.sampling import sample
from streamrl.producers.engine.scheduler import Chunk, Plan, Scheduler, Seq
from streamrl.producers.engine.slots import Sampler, SlotBuffers
from streamrl.producers.engine.weights import copy_hf_weights
from streamrl.recipe.engine import EngineConfig
from streamrl.weights.fp8 import is_quantized_state

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
        num_blocks = kv_blocks(config, mc)
        self.cache = KVCache.for_model(
            mc,
            num_slots=config.max_batch_size,
            max_seq_len=config.max_seq_len,
            num_blocks=num_blocks,
            block_size=config.kv_block_size,
            dtype=config.torch_dtype,
            device=config.torch_device,
        )
        self.scheduler = Scheduler(
            BlockPool(num_blocks), block_size=config.kv_block_size,
            num_slots=config.max_batch_size, max_step_tokens=config.max_step_tokens,
            share_prefixes=config.prefix_sharing, cache_prefixes=config.prefix_caching,
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
        self.adapters = Adapters(self.model, config.max_batch_size)  # LoRA, served unmerged
        self._version = version
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
        self.adapters.check(request.adapter)
        seed = request.params.seed
        seed = seed_from_request_id(request.request_id) if seed is None else seed
        salt = b"" if request.adapter is None else b"\xff" + request.adapter.encode()  # KV differs
        self.scheduler.add(Seq(_Entry(request, prompt, seed), prompt, salt))
        self._ids.add(request.request_id)

    def has_unfinished(self) -> bool:
        """True while some request has not been returned by `step()` yet."""
        return bool(self._ids)

    @property
    def stats(self) -> dict[str, int]:
        """Counters since the engine started: prompt tokens prefilled (recomputed ones
        included), context tokens whose k/v were reused instead (a sibling's prompt or the
        prefix cache), preemptions, the most sequences resident in the KV cache at once, and
        the pool's size in blocks (`kv_block_size` tokens each, block 0 is scratch)."""
        s = self.scheduler
        return {"num_prefill_tokens": s.num_prefill_tokens,
                "num_cached_prefix_tokens": s.num_cached_prefix_tokens,
                "num_preemptions": s.num_preemptions,
                "max_running": s.max_running, "num_kv_blocks": s.pool.num_blocks}

    def step(self) -> list[GenerationResult]:
        """Decode one token for every running sequence, prefill the step's chunks and admit
        waiting requests; returns the requests that finished (or were aborted) since the last
        step."""
        with torch.inference_mode():
            finished, self._aborted = self._aborted, []
            plan = self.scheduler.schedule()
            self._apply(plan)
            finished += self._decode(plan.decode)
            finished += self._prefill(plan.chunks)
        for result in finished:
            self._ids.discard(result.request_id)
        return finished

    def abort(self, request_id: str) -> bool:
        """Stop a queued or running request; the next `step()` returns it with finish_reason
        "abort" and the tokens sampled so far. False if no such unfinished request."""
        for seq in self.scheduler.waiting:
            if seq.entry.request.request_id == request_id:
                self.scheduler.waiting.remove(seq)
                # Aborted while queued: it never got a slot, its response is empty.
                empty = self.buffers.empty_response()
                self._aborted.append(self._result(seq.entry, empty, "abort"))
                return True
        for seq in self.scheduler.busy():
            if seq.entry.request.request_id == request_id:
                self._aborted += self._finish([(seq.slot, "abort")])
                return True
        return False

    def use_int4(self, spec: Int4Spec, source: Mapping[str, Tensor] | None = None) -> None:
        """Serve the weights `spec` targets as packed int4 (W4A16) from now on, quantized from
        the weights held and, on every `load_weights`, from the new version's as the INT4 QAT
        trainer fake-quantizes them (`streamrl/models/quant.py`). `source`: the held version's
        tensors at the trainer's precision (HF names), to quantize from instead of the engine's
        cast of them, so version 0 matches an fp32 trainer too. Decoding is eager from then on."""
        with torch.inference_mode():
            serve_int4(self.model, spec)
            if source is not None:
                load_int4(self.model, source)
        self._fused = None  # the fused CUDA decoder's projections are dense
        self.scheduler.clear_prefix_cache()  # cached k/v came from the dense weights

    def load_weights(self, state_dict: Mapping[str, Tensor], version: int) -> None:
        """Replace the weights (HF names, as `streamrl.models.checkpoint`) between steps.
        Running sequences keep their KV cache and continue; their next tokens carry `version`."""
        _check_version(version)
        if version <= self._version:
            raise ValueError(
                f"weight version {version} is not newer than the loaded version {self._version}"
            )
        if is_adapter(state_dict):  # a LoRA run's version: its adapter, on the same base
            self.load_adapter(state_dict)
        elif is_quantized_state(state_dict):  # an FP8 run's version (streamrl/weights/fp8.py)
            fresh = not fp8_layers(self.model)
            with torch.inference_mode():  # in place: the fused decoder's graphs see it
                load_fp8_state(self.model, state_dict, copy_hf_weights)
            if fresh:
                self._refit_fp8()
        else:
            with torch.inference_mode():
                copy_hf_weights(self.model, state_dict)
        self.scheduler.clear_prefix_cache()  # old weights' k/v serve no request from now on
        self._version = version

    def use_fp8(self) -> None:
        """Run the model's linear projections in FP8 from now on, quantized from the weights
        it holds (`streamrl/models/fp8_linear.py`; an FP8 run's engine at its first version, so
        every version it samples with is FP8). On CUDA the fused decoder runs the FP8
        projections (q|k|v and gate|up fused) from CUDA graphs where every projection's output
        size is a multiple of 128; elsewhere decoding is eager."""
        with torch.inference_mode():
            quantize_model(self.model)
        self._refit_fp8()
        self.scheduler.clear_prefix_cache()

    def _refit_fp8(self) -> None:
        """The projections just became FP8: repack the remaining parameters (the packed buffer
        would otherwise keep the replaced bf16 projections' bytes alive, ~2 bytes a weight) and
        build the fused decoder over the FP8 layers (the old one's graphs read the old
        weights)."""
        self._fused = None
        pack_weights(self.model)
        self._fused = _fused_decoder(self.model, self.cache, self.buffers, self.config)

    def load_adapter(self, tensors: Mapping[str, Tensor], adapter_id: str = RUN_ADAPTER) -> None:
        """Load or replace a LoRA adapter (a LoRA weight version's tensors) served unmerged,
        between steps: requests naming `adapter_id` (`GenerationRequest.adapter`; the default
        id is the run's own, which requests without one get) run through it, and one batch may
        mix adapters. The weight version is unchanged (`load_weights` sets it)."""
        self.adapters.load(adapter_id, tensors)
        self.scheduler.clear_prefix_cache()
        self._fused = None  # the fused CUDA decoder has no low-rank term: decode eagerly

    def close(self) -> None:
        """Drop unfinished requests and free the KV cache and CUDA graphs; idempotent."""
        if self._closed:
            return
        self._closed = True
        self.scheduler.waiting.clear()
        self._aborted.clear()
        self._ids.clear()
        self._fused = None
        del self.cache, self.buffers

    def generate(self, requests: Iterable[GenerationRequest]) -> list[GenerationResult]:
        """Run `requests` to completion on an idle engine; results in request order."""
        if self.has_unfinished():
            raise ValueError("generate() needs an idle engine; use add_request/step instead")
        return run_to_completion(self, requests)

    def _apply(self, plan: Plan) -> None:
        """Put the plan's bookkeeping on the device: new sequences' slot buffers, block-table
        rows, prompt blocks copied for sharing, preempted rows stopped."""
        if plan.admitted:
            e = [seq.entry for seq in plan.admitted]
            self.buffers.admit([seq.slot for seq in plan.admitted], [x.prompt for x in e],
                               [x.request.params for x in e], [x.seed for x in e])
            now = time.time()
            for x in e:
                x.started_at = now
            for seq in plan.admitted:
                self.adapters.assign(seq.slot, seq.entry.request.adapter)
        if plan.tables:
            self._write_tables(plan.tables)
        if plan.copies:
            src, dst = zip(*plan.copies, strict=True)
            device = self.cache.k.device
            self.cache.copy_blocks(torch.tensor(src, device=device),
                                   torch.tensor(dst, device=device))
        if plan.preempted:
            self.buffers.release(plan.preempted)

    def _write_tables(self, tables: dict[int, list[int]]) -> None:
        rows = np.zeros((len(tables), self.cache.blocks_per_seq), np.int64)  # 0: scratch
        for i, blocks in enumerate(tables.values()):
            rows[i, : len(blocks)] = blocks
        device = self.cache.block_tables.device
        slots = torch.tensor(list(tables), device=device)
        self.cache.block_tables[slots] = torch.from_numpy(rows).to(device)

    def _decode(self, slots: list[int]) -> list[GenerationResult]:
        # A CUDA-graph step runs the leading block of rows up to the last running slot (padded
        # to a captured size; rows without a running sequence write to the scratch block); the
        # eager one runs exactly the running rows.
        if not slots:
            return []
        if self._fused is not None:
            rows, status = self._fused.step(slots[-1] + 1, self._version, self._truncated())
            return self._collect(rows, status)
        b = self.buffers
        rows = torch.tensor(slots, device=b.tokens.device)  # [n]
        positions = b.length[rows] - 1  # [n] last token
        tokens = b.tokens[rows, positions]  # [n]
        self.adapters.select(rows)
        out = self.model(tokens[:, None], positions[:, None], kv_cache=self.cache, slots=rows)
        routed = None if out.routed_experts is None else out.routed_experts[:, 0]
        status = b.sample_next(rows, positions, out.logits[:, 0], routed, self._version)
        return self._collect(rows, status)

    def _prefill(self, chunks: list[Chunk]) -> list[GenerationResult]:
        # Chunks of similar length go through one forward: a shared prompt's samples prefill
        # one token each and would otherwise be padded to the longest prompt chunk.
        chunks = sorted(chunks, key=lambda c: c.start - c.end)  # longest first
        results, batch = [], []
        for chunk in chunks:
            if batch and 2 * (chunk.end - chunk.start) <= batch[0].end - batch[0].start:
                results += self._prefill_batch(batch)
                batch = []
            batch.append(chunk)
        return results + (self._prefill_batch(batch) if batch else [])

    def _prefill_batch(self, chunks: list[Chunk]) -> list[GenerationResult]:
        # One right-padded forward over these chunks: row i holds positions
        # [start, end) of its sequence; pad tokens continue the positions (capped at the last
        # one) and write k/v in the row's own future positions or the scratch block.
        b = self.buffers
        device = b.tokens.device
        T = max(c.end - c.start for c in chunks)
        starts = np.array([c.start for c in chunks])
        pos = np.minimum(starts[:, None] + np.arange(T), self.config.max_seq_len - 1)  # [n, T]
        rows = torch.tensor([c.slot for c in chunks], device=device)  # [n]
        positions = torch.from_numpy(pos).to(device)  # [n, T]
        tokens = b.tokens[rows[:, None], positions]  # [n, T]
        if self._fused is not None:
            hidden, routed = self._fused.prefill(rows, tokens, positions)  # [n, T, H]
        else:
            self.adapters.select(rows)
            out = self.model(tokens, positions, kv_cache=self.cache, slots=rows,
                             return_hidden=True)
            hidden, routed = out.hidden, out.routed_experts
        done = [i for i, c in enumerate(chunks) if c.done]
        if done:
            b.active[rows[done]] = True  # prompt (or recomputed context) complete: decode on
        pick = [i for i, c in enumerate(chunks) if c.sample]
        if not pick:
            return []
        idx = torch.tensor(pick, device=device)
        last = torch.tensor([chunks[i].end - chunks[i].start - 1 for i in pick], device=device)
        routed = None if routed is None else routed[idx, last]  # [k, num_moe_layers, top_k]
        logits = self.model.logits(hidden[idx, last])  # [k, V]
        sampled = rows[idx]
        ends = torch.tensor([chunks[i].end - 1 for i in pick], device=device)  # prompt's last
        status = b.sample_next(sampled, ends, logits, routed, self._version, self._sampler())
        now = time.time()
        for i in pick:
            self.scheduler.slots[chunks[i].slot].entry.first_token_at = now  # type: ignore[union-attr]
        return self._collect(sampled, status)

    def _truncated(self) -> bool:
        """Whether some running request samples with top-k or top-p."""
        return any(
            s.entry.request.params.top_k > 0 or s.entry.request.params.top_p < 1
            for s in self.scheduler.busy()
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
        seqs = [self.scheduler.slots[slot] for slot in slots]
        fields = self.buffers.responses(slots, [s.prompt_len for s in seqs])  # type: ignore[union-attr]
        entries = [self.scheduler.finish(slot, f["response_tokens"]).entry
                   for slot, f in zip(slots, fields, strict=True)]
        results = [self._result(entry, f, reason)
                   for entry, f, (_, reason) in zip(entries, fields, done, strict=True)]
        self.buffers.release(slots)
        self._write_tables({s: [] for s in slots})  # back to scratch: their blocks are free
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


def kv_blocks(config: EngineConfig, model_config) -> int:
    """Blocks in the KV pool, scratch block included: `kv_blocks`, or `kv_memory_fraction` of
    the device's free memory now, or by default enough for every slot at `max_seq_len` (no
    preemption ever; the memory of a static cache)."""
    per_seq = -(-config.max_seq_len // config.kv_block_size)
    if config.kv_blocks is not None:
        num = config.kv_blocks
    elif config.kv_memory_fraction is not None:
        free, _ = torch.cuda.mem_get_info(config.torch_device)
        per_block = KVCache.bytes_per_block(model_config, config.kv_block_size, config.torch_dtype)
        num = int(free * config.kv_memory_fraction) // per_block
    else:
        return config.max_batch_size * per_seq + 1
    if num < per_seq + 1:
        raise ValueError(
            f"the KV pool holds {num} blocks of {config.kv_block_size} tokens, fewer than one "
            f"sequence of max_seq_len={config.max_seq_len} needs ({per_seq}) plus the scratch "
            "block: raise kv_blocks / kv_memory_fraction or lower max_seq_len"
        )
    return num


def _check_version(version: int) -> None:
    if not 0 <= version < _MAX_VERSION:
        raise ValueError(f"weight version must be in [0, 2**32), got {version}")
