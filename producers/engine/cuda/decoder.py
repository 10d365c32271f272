"""`FusedDecoder`: the engine's decode step for dense models of every family (Llama, Mistral,
Qwen2, Qwen3), as few launches as possible, replayed from CUDA graphs.

Family switches: q/k norm runs only where the model has it (Qwen3), biases (Qwen2's q/k/v,
Llama's `attention_bias`/`mlp_bias`) ride in the GEMMs (`F.linear(x, w, b)`), and the rotary
frequencies are the eager model's own (`streamrl.models.rope`, llama3 scaling included). Not
covered (`unsupported_reason`; `decode="auto"` then decodes eagerly): a sliding window shorter
than the engine's `max_seq_len` (Mistral v0.1's 4096), which the split-K attention kernel does
not apply; partial rotary (GLM-4.5), which the fused rotary does not.

MoE layers (Qwen3-MoE, Qwen2-MoE) run the model's own `MoE` module: router, top-k and the
grouped experts of `streamrl.models.grouped`, whose shapes depend only on the batch, never on
the routing, and which never synchronise with the host, so they are captured like the rest.
Each step's routed ids go to the slot buffers as in the eager path.

Per layer the step is nine launches: add+RMSNorm, the fused qkv GEMM, q/k norm + rotary + KV
write, decode attention over actual lengths, the o GEMM, add+RMSNorm, the fused gate-up GEMM,
silu*mul, the down GEMM (the residual add rides in the next norm). Then the final norm, the LM
head and sampling plus the slot bookkeeping of `SlotBuffers.sample_next`.

Prefill of prompt chunks runs the same kernels over all their tokens, with SDPA for attention
over k/v gathered through the block tables (`prefill`); it is not captured (its shape changes
with every batch of chunks).

Fused weights: q/k/v and gate/up are one matrix each (and one bias each, when present), sharing
memory with the model's own
parameters (a view of the adjacent weights of a packed engine, else a concatenation that the
parameters then view). `load_weights` copies into those parameters in place, so the
fused matrices, and every captured graph that reads them, see each new version with no re-fuse.

Graphs: the step reads everything from device tensors (the slot buffers' tokens, lengths and
active flags, the KV pool and its block tables, a device scalar holding the weight version),
so a graph needs no input copies. One graph per (batch bucket, sampler) is captured on first
use: buckets are powers of two up to `max_batch_size` (plus `max_batch_size` itself); a step
of n running rows replays the smallest bucket >= n, whose extra rows hold no running sequence
(inactive: their k/v go to the scratch block, their sample to the slot buffers' scratch
column). The first step of a new bucket runs eagerly (compiling the kernels), then captures.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor

from streamrl.models import CausalLM, KVCache
from streamrl.models.fp8_linear import Fp8Linear, fuse_fp8
from streamrl.models.moe import MoE
from streamrl.models.rope import inverse_frequencies, rope_attention_factor
from streamrl.producers.engine.cuda.attention import decode_attention, num_splits
from streamrl.producers.engine.cuda.fused import add_rmsnorm, qk_norm_rope_cache, silu_mul
from streamrl.producers.engine.cuda.sampling import sample_untruncated
from streamrl.producers.engine.sampling import sample
from streamrl.producers.engine.slots import SlotBuffers


def unsupported_reason(model: CausalLM, max_seq_len: int | None = None) -> str | None:
    """Why the fused decoder cannot run `model` with sequences up to `max_seq_len` (default:
    the model's `max_position_embeddings`), or None if it can."""
    c = model.config
    limit = c.max_position_embeddings if max_seq_len is None else max_seq_len
    if c.is_mla:
        return ("multi-head latent attention: its cache holds latent rows, which the fused "
                "kernels do not read; use decode='eager'")
    if rope_attention_factor(c.rope_scaling) != 1.0:
        return ("YaRN rope with an attention factor other than 1 (the fused rotary does not "
                "scale cos/sin); use decode='eager'")
    if not c.is_mla and c.rotary_dim != c.head_dim:
        return (f"partial rotary (GLM's partial_rotary_factor {c.partial_rotary_factor}: "
                f"{c.rotary_dim} of {c.head_dim} dims per head), which the fused rotary does "
                "not apply; use decode='eager'")
    if c.sliding_window is not None and c.sliding_window < limit:
        return (f"a sliding window ({c.sliding_window}) shorter than max_seq_len ({limit}); "
                "use decode='eager', or max_seq_len <= sliding_window")
    odd = [name for name, m in model.named_modules()
           if isinstance(m, Fp8Linear) and m.out_features % 128]
    if odd:
        return (f"FP8 projections whose output size is not a multiple of 128 ({odd[0]}: their "
                "128x128 scale blocks cannot be fused); use decode='eager'")
    return None


def fuse_linears(*linears: torch.nn.Linear, attr: str = "weight") -> Tensor:
    """The weights (or, with attr="bias", the biases) of `linears` as one tensor along the
    output dim, sharing memory with the parameters, so in-place updates of the parameters
    update the fused tensor. Tensors already adjacent in one storage
    (`producers/engine/packing.py` lays them out so) are viewed as one, nothing moves;
    otherwise they are concatenated and each parameter becomes a view into the result."""
    params = [getattr(lin, attr) for lin in linears]
    tensors = [p.data for p in params]
    if _adjacent(tensors):
        first = tensors[0]
        rows = sum(t.shape[0] for t in tensors)
        return first.as_strided((rows, *first.shape[1:]), first.stride())  # [sum out, (in)]
    fused = torch.cat(tensors)  # [sum out, (in)]
    offset = 0
    for p in params:
        rows = p.shape[0]
        p.data = fused[offset : offset + rows]
        offset += rows
    return fused


def _adjacent(weights: list[Tensor]) -> bool:
    """Whether these 1-D or 2-D tensors follow one another, gapless, in one storage."""
    first = weights[0]
    for a, b in itertools.pairwise(weights):
        if not (a.is_contiguous() and b.is_contiguous() and b.dtype == first.dtype
                and b.device == first.device and b.shape[1:] == first.shape[1:]
                and b.untyped_storage().data_ptr() == first.untyped_storage().data_ptr()
                and a.storage_offset() + a.numel() == b.storage_offset()):
            return False
    return first.dim() in (1, 2) and first.is_contiguous()


def _bias(linear: torch.nn.Linear) -> Tensor | None:
    return None if linear.bias is None else linear.bias.data


class _Layer:
    __slots__ = ("down", "down_b", "gate_up", "gate_up_b", "k_norm", "ln_attn", "ln_mlp", "moe",
                 "o", "o_b", "q_norm", "qkv", "qkv_b")

    def __init__(self, layer: torch.nn.Module) -> None:
        attn, mlp = layer.self_attn, layer.mlp
        self.qkv = _fused(attn.q_proj, attn.k_proj, attn.v_proj)
        self.qkv_b = (None if attn.q_proj.bias is None
                      else fuse_linears(attn.q_proj, attn.k_proj, attn.v_proj, attr="bias"))
        self.o, self.o_b = _weight(attn.o_proj), _bias(attn.o_proj)
        self.moe = mlp if isinstance(mlp, MoE) else None
        if self.moe is None:
            self.gate_up = _fused(mlp.gate_proj, mlp.up_proj)
            self.gate_up_b = (None if mlp.gate_proj.bias is None
                              else fuse_linears(mlp.gate_proj, mlp.up_proj, attr="bias"))
            self.down, self.down_b = _weight(mlp.down_proj), _bias(mlp.down_proj)
        # None without q/k norm (Llama, Mistral, Qwen2): the kernel then only rotates.
        self.q_norm = None if attn.q_norm is None else attn.q_norm.weight
        self.k_norm = None if attn.k_norm is None else attn.k_norm.weight
        self.ln_attn = layer.input_layernorm.weight
        self.ln_mlp = layer.post_attention_layernorm.weight

    def mlp(self, h: Tensor, routed: list[Tensor]) -> Tensor:
        """The MLP's output for normed rows `h` [n, H]; an MoE layer appends its ids [n, k]."""
        if self.moe is not None:
            out, ids = self.moe(h[None])  # [1, n, H], [1, n, k]
            routed.append(ids[0])
            return out[0]
        return _linear(silu_mul(_linear(h, self.gate_up, self.gate_up_b)), self.down,
                       self.down_b)


# An FP8 engine (`TorchEngine.use_fp8`, streamrl/models/fp8_linear.py): each projection is an
# `Fp8Linear`, and a "weight" below is then that module (q|k|v and gate|up fused by
# `fuse_fp8`), called instead of F.linear; its bias rides in it (the fused bias is passed on).
Weight = Tensor | Fp8Linear


def _fused(*linears: torch.nn.Module) -> Weight:
    if isinstance(linears[0], Fp8Linear):
        fused = fuse_fp8(*linears)  # type: ignore[arg-type]
        assert fused is not None  # unsupported_reason refused unfusable FP8 models
        return fused
    return fuse_linears(*linears)  # type: ignore[arg-type]


def _weight(linear: torch.nn.Module) -> Weight:
    return linear if isinstance(linear, Fp8Linear) else linear.weight


def _linear(x: Tensor, w: Weight, b: Tensor | None) -> Tensor:
    if isinstance(w, Fp8Linear):
        y = w(x)
        return y if b is None or w.bias is not None else y + b
    return F.linear(x, w, b)


class FusedDecoder:
    """Decode steps of `model` over `cache` and `buffers` (see the module docstring)."""

    def __init__(self, model: CausalLM, cache: KVCache, buffers: SlotBuffers, *,
                 graphs: bool) -> None:
        if (reason := unsupported_reason(model, cache.max_seq_len)) is not None:
            raise ValueError(f"the fused decoder does not support {reason}")
        c = model.config
        self.model, self.cache, self.buffers = model, cache, buffers
        self.layers = [_Layer(layer) for layer in model.model.layers]
        self.eps, self.num_heads = c.rms_norm_eps, c.num_attention_heads
        device = buffers.tokens.device
        # Exactly the eager RotaryEmbedding's inverse frequencies (the same function).
        self.inv_freq = inverse_frequencies(c.head_dim, c.rope_theta, c.rope_scaling,
                                            device)  # [D/2]
        self.version = torch.zeros((), dtype=torch.int64, device=device)
        self._version = 0  # what `self.version` holds
        num_slots = cache.num_slots
        self.rows = torch.arange(num_slots, device=device)
        self.buckets = sorted({min(1 << i, num_slots) for i in range(num_slots.bit_length() + 1)})
        self.graphs = graphs and device.type == "cuda"
        sms = torch.cuda.get_device_properties(device).multi_processor_count if self.graphs else 1
        self._splits = {n: num_splits(n, c.num_key_value_heads, cache.max_seq_len, sms)
                        for n in self.buckets}
        self._captured: dict[tuple[int, bool], tuple[torch.cuda.CUDAGraph, Tensor]] = {}
        self._pool = torch.cuda.graph_pool_handle() if self.graphs else None

    def bucket(self, num_rows: int) -> int:
        return next(b for b in self.buckets if b >= num_rows)

    def step(self, num_rows: int, version: int, truncated: bool) -> tuple[Tensor, Tensor]:
        """Decode rows 0..num_rows-1 (padded to a bucket); returns (rows, status) as
        `SlotBuffers.sample_next`. `truncated`: some running request uses top-k/top-p."""
        n = self.bucket(num_rows)
        if version != self._version:  # a launch per step otherwise
            self.version.fill_(version)
            self._version = version
        if not self.graphs:
            return self.rows[:n], self.forward(n, truncated)
        key = (n, truncated)
        if key not in self._captured:
            status = self.forward(n, truncated)  # this step, eagerly; compiles the kernels
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                captured = self.forward(n, truncated)  # recorded, not run
            self._captured[key] = (graph, captured)
            return self.rows[:n], status
        graph, status = self._captured[key]
        graph.replay()
        return self.rows[:n], status

    def prefill(self, slots: Tensor, tokens: Tensor, positions: Tensor
                ) -> tuple[Tensor, Tensor | None]:
        """Prompt chunks, right-padded: row b holds tokens at `positions[b]` of the sequence in
        `slots[b]`. The same fused kernels over all B*T tokens (the eager model's norms and
        rotary cost ~3x more at this size), SDPA over each row's k/v up to its positions
        (causal over the new tokens alone when every row starts at 0). Returns final-norm
        hidden [B, T, H] and, for an MoE model, the routed ids [B, T, num_moe_layers, k] (else
        None); pad positions hold garbage and write k/v that the row overwrites before use."""
        # slots: [B]; tokens, positions: [B, T]
        B, T = tokens.shape
        cache, Hq = self.cache, self.num_heads
        dest = cache.addresses(slots, positions)  # [B, T]
        fresh = bool((positions[:, 0] == 0).all())  # then positions are 0..T-1 in every row
        kv_len = T if fresh else int(positions.max()) + 1
        j = torch.arange(kv_len, device=tokens.device)
        read = dest if fresh else cache.addresses(slots, j.expand(B, -1))  # [B, kv_len]
        mask = None if fresh else (j <= positions[:, :, None])[:, None]  # [B, 1, T, kv_len]
        flat_pos = positions.reshape(-1)
        x = F.embedding(tokens.reshape(-1), self.model.model.embed_tokens.weight)  # [B*T, H]
        delta, routed = None, []
        for i, layer in enumerate(self.layers):
            h = add_rmsnorm(x, delta, layer.ln_attn, self.eps)
            q = qk_norm_rope_cache(_linear(h, layer.qkv, layer.qkv_b), layer.q_norm,
                                   layer.k_norm, self.inv_freq, self.eps, cache.k[i],
                                   cache.v[i], dest.reshape(-1), flat_pos, Hq)  # [B*T, Hq, D]
            k_all, v_all = cache.flat(i)  # [N * bs, Hkv, D]
            k, v = k_all[read].transpose(1, 2), v_all[read].transpose(1, 2)  # [B, Hkv, S, D]
            attn = F.scaled_dot_product_attention(
                q.view(B, T, Hq, -1).transpose(1, 2), k, v, attn_mask=mask, is_causal=fresh,
                enable_gqa=Hq != k.shape[1])  # [B, Hq, T, D]
            attn = attn.transpose(1, 2).reshape(B * T, -1)
            h = add_rmsnorm(x, _linear(attn, layer.o, layer.o_b), layer.ln_mlp, self.eps)
            delta = layer.mlp(h, routed)
        hidden = add_rmsnorm(x, delta, self.model.model.norm.weight, self.eps).view(B, T, -1)
        return hidden, (torch.stack(routed, 1).view(B, T, len(routed), -1) if routed else None)

    def forward(self, n: int, truncated: bool) -> Tensor:
        """One decode step of rows 0..n-1, launched kernel by kernel; returns their status."""
        b, cache = self.buffers, self.cache
        rows = self.rows[:n]
        active = b.active[:n]
        positions = torch.where(active, b.length[:n] - 1, 0)  # [n] each row's last token
        lengths = positions + 1  # [n] cached tokens each query attends to (itself included)
        # Rows without a running sequence write into the scratch block (block 0).
        dest = torch.where(active, cache.addresses(rows, positions[:, None])[:, 0], 0)  # [n]
        tokens = b.tokens[:n].gather(1, positions[:, None])[:, 0]  # [n]
        x = F.embedding(tokens, self.model.model.embed_tokens.weight)  # [n, H] residual stream
        splits = self._splits[n]
        delta, routed = None, []
        for i, layer in enumerate(self.layers):
            h = add_rmsnorm(x, delta, layer.ln_attn, self.eps)
            q = qk_norm_rope_cache(_linear(h, layer.qkv, layer.qkv_b), layer.q_norm,
                                   layer.k_norm, self.inv_freq, self.eps, cache.k[i],
                                   cache.v[i], dest, positions, self.num_heads)  # [n, Hq, D]
            attn = decode_attention(q, cache.k[i], cache.v[i], cache.block_tables, rows, lengths,
                                    splits=splits)
            h = add_rmsnorm(x, _linear(attn.view(n, -1), layer.o, layer.o_b), layer.ln_mlp,
                            self.eps)
            delta = layer.mlp(h, routed)
        h = add_rmsnorm(x, delta, self.model.model.norm.weight, self.eps)
        logits = F.linear(h, self.model.lm_head.weight)  # [n, V]
        sampler = sample if truncated else sample_untruncated
        routed_ids = torch.stack(routed, 1) if routed else None  # [n, num_moe_layers, k]
        return b.sample_next(rows, positions, logits, routed_ids, self.version, sampler=sampler)
