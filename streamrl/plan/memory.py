"""Memory per GPU of the trainer (megatron-core layout) and of a rollout engine, in bytes, as
pure functions of the parameter counts, the parallel sizes and the recipe's lengths.

Trainer, per GPU of the heaviest pipeline stage (t = tensor, p = pipeline, e = expert, d = data
parallel size; expert parameters are split over e ranks whole, expert tensor parallel 1, so their
data-parallel size is d_e = t*d/e):

    P_gpu       = (attention + dense MLP + shared experts + embedding/LM head of the stage) / t
                  + norms + routers (replicated) + routed experts / e
    weights     = 2 * P_gpu                                   bf16 parameters
    gradients   = g * P_gpu                                   g = 4 (fp32 main grads) or 2 (bf16)
    optimizer   = 12 * (P_dense / d + P_expert / d_e)         fp32 master + Adam m and v, sharded
                                                              over data parallel (distributed
                                                              optimizer)
    activations = m * L_s * A_layer                           without recompute
                = m * L_s * 2*h*T/t + A_layer                 with full recompute (each layer's
                                                              input kept; one layer rebuilt at a
                                                              time in backward)
    logits      = min(T, chunk) * V/t * 8                     the LM-head chunk: bf16 logits,
                                                              their fp32 log-softmax, bf16 grad

with T = rows * seq_len tokens per micro-batch, L_s the stage's layers, m = min(p, micro-batches)
micro-batches in flight on the first stage (1F1B), and A_layer the bf16 tensors a layer keeps for
backward, per token and divided by t (sequence parallel):

    GQA attention   2*h (norm in, out) + H*d (q) + 2*K*d (k, v) + H*d (output)
    MLA attention   2*h + 2*r_q + H*(d_nope + d_rope) (q) + (r_kv + d_rope) + r_kv
                    + H*(d_nope + d_rope) (k) + 2*H*d_v (v, output)
    dense MLP       2*h + 3*I (gate, up, silu*up)
    MoE MLP         2*h + 4*E (fp32 router logits) + k*(2*h + 3*I_e) (each routed copy: input,
                    gate, up, product, output; balanced routing) + 3*I_s (shared expert)

Engine, per GPU of a tensor-parallel group of size t_e (bf16 for SGLang; the embedded engine's
`rollout.engine.dtype` otherwise, b bytes):

    weights     = b * P_total / t_e
    KV cache    = batch * seq_len * L * kv_bytes_per_token_layer
                  GQA: 2 (k, v) * ceil(K / t_e) * d * b
                  MLA: (r_kv + d_rope) * b, the latent and the rotary key, on every rank

The torch backend (`trainer.backend = "torch"`, this repository's learner: fp32 parameters
under bf16 autocast, fused AdamW, gradients set to None before each forward; FSDP2 shards the
first three terms over d) has its own layout, `torch_learner_memory`:

    weights     = 4 * P                                       fp32 parameters (the master copy)
    optimizer   = 8 * P                                       Adam m and v
    gradients   = 4 * P                                       fp32, live only after backward
    activations = L * A_torch + 2 * (P - V*h)                 plus the bf16 weight copies
                                                              autocast keeps for backward
    logits      = min(T, chunk) * V * 8
    peak        = weights + optimizer + max(gradients, activations + logits)

    A_torch (bytes per token and layer, measured from the tensors autograd saves in this
    repository's model: fp32 residual stream and norms, bf16 casts of each projection's input)
        dense layer   32*h + 8*I + 10*H*d + 10*K*d
        MoE layer     32*h + 10*H*d + 10*K*d + 4*E + k*(12*h + 16*I_e) + 8*I_s
                      (the grouped expert path on CPU keeps each routed copy in fp32; the
                      expert path is being rewritten, so this term is the least certain)
        recompute     4*h per layer (its fp32 input) + one layer's A_torch

    In fp32 (`autocast=False`, the CPU learner) no bf16 copies are kept and every saved tensor
    is fp32 (measured the same way, tests/trainer/test_long_sequences.py):
        dense layer   24*h + 16*I + 20*H*d + 16*K*d + 8*H + 16, plus 8*h + 8*d per token
                      outside the layers (embedding output, rotary tables)
        logits        min(T, chunk) * V * 12
    A packed row (several samples; `packed=True`) attends through a [S, S] mask that SDPA
    turns into one float copy per layer it keeps for backward: rows * S^2 * (4 in fp32, 2 in
    bf16) per layer held (every layer, or one with recompute).
"""

from __future__ import annotations

import math
from itertools import pairwise

import msgspec

from streamrl.plan.params import LayerParams, ParamCounts
from streamrl.plan.shape import ModelShape

BF16 = 2
OPTIMIZER_BYTES = 12  # fp32 master + exp_avg + exp_avg_sq
LOGIT_BYTES = 8


class Parallel(msgspec.Struct, kw_only=True, frozen=True):
    tensor: int = 1
    pipeline: int = 1
    expert: int = 1
    data: int = 1

    @property
    def world(self) -> int:
        return self.tensor * self.pipeline * self.data

    @property
    def expert_data(self) -> int:
        """Data-parallel size of the routed experts (expert tensor parallel 1)."""
        return self.tensor * self.data // self.expert


class TrainerMemory(msgspec.Struct, kw_only=True, frozen=True):
    stage: int
    """The pipeline stage these figures are for (the heaviest)."""
    params: int
    """Parameters held on one GPU of that stage."""
    weights: int
    gradients: int
    optimizer: int
    activations: int
    logits: int
    not_live: int = 0
    """Bytes of the terms above never live at the same time as the rest (the torch backend's
    gradients and its activations); subtracted from the total."""

    @property
    def total(self) -> int:
        return (self.weights + self.gradients + self.optimizer + self.activations + self.logits
                - self.not_live)


class EngineMemory(msgspec.Struct, kw_only=True, frozen=True):
    weights: int
    kv_cache: int
    kv_bytes_per_token: int
    """KV bytes one token takes on one GPU, all layers."""

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache


def check_parallel(shape: ModelShape, par: Parallel) -> None:
    """ValueError with how to fix it, for sizes megatron-core would refuse."""
    if min(par.tensor, par.pipeline, par.expert, par.data) < 1:
        raise ValueError(f"parallel sizes must be at least 1, got {par}")
    if par.pipeline > shape.num_layers:
        raise ValueError(f"pipeline parallel {par.pipeline} > the model's {shape.num_layers} "
                         "layers: lower trainer.megatron.pipeline_parallel")
    kv_split = shape.num_kv_heads % par.tensor and par.tensor % shape.num_kv_heads
    if shape.num_heads % par.tensor or kv_split:
        raise ValueError(f"tensor parallel {par.tensor} must divide the {shape.num_heads} "
                         f"attention heads (and {shape.num_kv_heads} kv heads, or be a "
                         "multiple of them)")
    if par.expert > 1 and not shape.is_moe:
        raise ValueError("expert parallel > 1 on a dense model: set "
                         "trainer.megatron.expert_parallel = 1")
    if shape.is_moe and shape.num_experts % par.expert:
        raise ValueError(f"expert parallel {par.expert} must divide the {shape.num_experts} "
                         "routed experts")
    if (par.tensor * par.data) % par.expert:
        raise ValueError(f"expert parallel {par.expert} must divide tensor x data parallel "
                         f"({par.tensor} x {par.data}): give the trainer more GPUs or lower "
                         "trainer.megatron.expert_parallel")


def activation_widths(shape: ModelShape, layer: LayerParams) -> int:
    """Bytes one token of one layer keeps for backward at t = 1 (the A_layer of the module doc)."""
    h, heads = shape.hidden_size, shape.num_heads
    if shape.attention == "mla":
        qk = shape.qk_nope_head_dim + shape.qk_rope_head_dim
        attention = (2 * h + 2 * (shape.q_lora_rank or 0) + heads * qk
                     + shape.kv_lora_rank + shape.qk_rope_head_dim + shape.kv_lora_rank
                     + heads * qk + 2 * heads * shape.v_head_dim)
    else:
        attention = 2 * h + 2 * heads * shape.head_dim + 2 * shape.num_kv_heads * shape.head_dim
    if layer.routed:
        mlp = (2 * h + 2 * shape.num_experts
               + shape.top_k * (2 * h + 3 * shape.moe_intermediate_size)
               + 3 * shape.shared_intermediate_size)
    else:
        mlp = 2 * h + 3 * shape.intermediate_size
    return BF16 * (attention + mlp)


def stage_layers(num_layers: int, pipeline: int) -> list[range]:
    """Contiguous layer ranges per stage, the first stages taking one more when uneven."""
    base, extra = divmod(num_layers, pipeline)
    bounds = [0]
    for stage in range(pipeline):
        bounds.append(bounds[-1] + base + (stage < extra))
    return [range(a, b) for a, b in pairwise(bounds)]


def trainer_memory(shape: ModelShape, params: ParamCounts, par: Parallel, *, rows: int,
                   seq_len: int, num_microbatches: int, recompute: bool,
                   grad_bytes: int = 4, logprob_chunk_tokens: int = 4096) -> TrainerMemory:
    """The heaviest pipeline stage's memory per GPU (module doc for every term)."""
    check_parallel(shape, par)
    t, tokens = par.tensor, rows * seq_len
    stages = stage_layers(shape.num_layers, par.pipeline)
    in_flight = min(par.pipeline, num_microbatches)
    best: TrainerMemory | None = None
    for index, layers in enumerate(stages):
        chunk = [params.layers[i] for i in layers]
        sharded = sum(x.attention + x.mlp + x.shared for x in chunk)
        replicated = sum(x.norms + x.router for x in chunk)
        routed = sum(x.routed for x in chunk)
        first, last = index == 0, index == len(stages) - 1
        sharded += params.embedding * first + params.lm_head * last
        replicated += params.final_norm * last
        dense = sharded / t + replicated
        expert = routed / par.expert
        per_layer = [activation_widths(shape, x) * tokens / t for x in chunk]
        if recompute:
            activations = in_flight * len(chunk) * BF16 * shape.hidden_size * tokens / t
            activations += max(per_layer, default=0)
        else:
            activations = in_flight * sum(per_layer)
        logits = (min(tokens, logprob_chunk_tokens) * shape.vocab_size / t * LOGIT_BYTES
                  if last else 0)
        held = dense + expert
        memory = TrainerMemory(
            stage=index, params=round(held), weights=round(BF16 * held),
            gradients=round(grad_bytes * held),
            optimizer=round(OPTIMIZER_BYTES * (dense / par.data + expert / par.expert_data)),
            activations=round(activations), logits=round(logits))
        if best is None or memory.total > best.total:
            best = memory
    assert best is not None
    return best


def torch_activation_bytes(shape: ModelShape, layer: LayerParams) -> int:
    """A_torch of the module doc: bytes one token of one layer keeps for backward in the torch
    backend's model under bf16 autocast."""
    h = shape.hidden_size
    q, kv = shape.num_heads * shape.head_dim, shape.num_kv_heads * shape.head_dim
    if shape.attention == "mla":  # not run by the model code yet: its widths in GQA's places
        q = shape.num_heads * (shape.qk_nope_head_dim + shape.qk_rope_head_dim)
        kv = shape.kv_lora_rank + shape.qk_rope_head_dim
    base = 32 * h + 10 * q + 10 * kv
    if layer.routed:
        return (base + 4 * shape.num_experts
                + shape.top_k * (12 * h + 16 * shape.moe_intermediate_size)
                + 8 * shape.shared_intermediate_size)
    return base + 8 * shape.intermediate_size


def torch_fp32_activation_bytes(shape: ModelShape, layer: LayerParams) -> int:
    """Bytes one token of one layer keeps for backward in fp32 (no autocast; module doc)."""
    if layer.routed:  # experts are not measured in fp32: the bf16 widths, doubled
        return 2 * torch_activation_bytes(shape, layer)
    h, heads = shape.hidden_size, shape.num_heads
    q, kv = heads * shape.head_dim, shape.num_kv_heads * shape.head_dim
    return 24 * h + 16 * shape.intermediate_size + 20 * q + 16 * kv + 8 * heads + 16


def torch_learner_memory(shape: ModelShape, params: ParamCounts, *, rows: int, seq_len: int,
                         recompute: bool, data: int = 1, logprob_chunk_tokens: int = 4096,
                         autocast: bool = True, packed: bool = False) -> TrainerMemory:
    """The torch backend's peak per GPU (module doc); `data` > 1 is FSDP2 sharding the
    parameters, gradients and optimizer state over that many GPUs. `autocast=False`: the fp32
    learner (CPU); `packed`: rows hold several samples (a [S, S] attention mask per layer)."""
    tokens, total = rows * seq_len, params.total
    width = torch_activation_bytes if autocast else torch_fp32_activation_bytes
    mask = rows * seq_len**2 * (BF16 if autocast else 4) if packed else 0
    per_layer = [width(shape, x) * tokens + mask for x in params.layers]
    if recompute:
        activations = 4 * shape.hidden_size * tokens * len(per_layer) + max(per_layer)
    else:
        activations = sum(per_layer)
    if autocast:
        activations += BF16 * (total - params.embedding) // data
    else:
        activations += (8 * shape.hidden_size + 8 * shape.head_dim) * tokens
    logits = (min(tokens, logprob_chunk_tokens) * shape.vocab_size
              * (LOGIT_BYTES if autocast else 12))
    gradients = 4 * total // data
    return TrainerMemory(stage=0, params=total // data, weights=4 * total // data,
                         gradients=gradients, optimizer=8 * total // data,
                         activations=round(activations), logits=round(logits),
                         not_live=min(gradients, round(activations + logits)))


def kv_bytes_per_token(shape: ModelShape, tensor: int = 1, dtype_bytes: int = BF16) -> int:
    """KV-cache bytes of one token over all layers on one GPU of a tensor-parallel group."""
    if shape.attention == "mla":
        per_layer = (shape.kv_lora_rank + shape.qk_rope_head_dim) * dtype_bytes
    else:
        per_layer = 2 * math.ceil(shape.num_kv_heads / tensor) * shape.head_dim * dtype_bytes
    return per_layer * shape.num_layers


def engine_memory(shape: ModelShape, params: ParamCounts, *, tensor: int, batch: int,
                  seq_len: int, dtype_bytes: int = BF16, kv_tokens: int | None = None,
                  kv_fraction: float | None = None, gpu_bytes: int | None = None
                  ) -> EngineMemory:
    """Weights plus the KV pool: `kv_tokens` tokens when the pool is sized in blocks (the
    embedded engine's `kv_blocks`), `kv_fraction` of what the weights leave of `gpu_bytes`
    (its `kv_memory_fraction`), else `batch` sequences at `seq_len` (a static cache)."""
    per_token = kv_bytes_per_token(shape, tensor, dtype_bytes)
    weights = math.ceil(dtype_bytes * params.total / tensor)
    if kv_tokens is not None:
        kv = kv_tokens * per_token
    elif kv_fraction is not None and gpu_bytes is not None:
        kv = int(kv_fraction * max(gpu_bytes - weights, 0))
    else:
        kv = batch * seq_len * per_token
    return EngineMemory(weights=weights, kv_cache=kv, kv_bytes_per_token=per_token)
