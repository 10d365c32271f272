"""`make_plan`: a recipe's placement on N GPUs of M bytes each, sized from config.json alone.

GPUs go to the engines first (rollout.num_producers servers of `engine_options.tp_size` GPUs
each; colocated placement shares the trainer's), the rest to the trainer, whose data-parallel
size is what they leave after tensor x pipeline (`[trainer.megatron]`). Each GPU may use
`1 - reserve` of its memory (the rest: CUDA context, allocator fragmentation, NCCL buffers,
the engine's CUDA graphs and activations). A plan lists every term; `Plan.overflows` names what
does not fit and by how much, and is empty when the placement fits.

Lengths: a trainer row and an engine sequence are `max_seq_len` tokens (the SGLang option when
set, else `rollout.engine.max_seq_len`); a micro-batch holds `trainer.compute.micro_batch_rows`
rows, or the whole minibatch of a data-parallel rank. Routing bytes assume every response is
`rollout.max_new_tokens` long (the bound). Engines and trainer share GPUs under
`placement.mode = "colocated"` or the cuda_ipc weight transport (one GPU).
"""

from __future__ import annotations

import math
import re
from typing import Any

import msgspec

from streamrl.plan.memory import (
    EngineMemory,
    Parallel,
    TrainerMemory,
    engine_memory,
    torch_learner_memory,
    trainer_memory,
)
from streamrl.plan.params import ParamCounts, count_params
from streamrl.plan.shape import ModelShape, read_shape
from streamrl.recipe.config import RunConfig
from streamrl.schemas.routing_pack import packing

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


class Plan(msgspec.Struct, kw_only=True, frozen=True):
    model_type: str
    num_gpus: int
    gpu_bytes: int
    usable_bytes: int
    params: ParamCounts
    colocated: bool
    engine_gpus: int
    engine_tensor: int
    engine_batch: int
    trainer_gpus: int
    parallel: Parallel | None
    """None when the engines leave the trainer too few GPUs for tensor x pipeline."""
    trainer: TrainerMemory | None
    engine: EngineMemory
    rows_per_microbatch: int
    seq_len: int
    weight_sync_bytes: int
    """Bytes every engine receives per weight version (bf16 weights)."""
    routing_bytes_per_sample: int
    """Packed routing of one response of max_new_tokens tokens (0 for dense models)."""
    routing_bytes_per_version: int
    overflows: tuple[str, ...]

    @property
    def fits(self) -> bool:
        return not self.overflows


def parse_bytes(text: str) -> int:
    """'80GiB', '80GB', '141 GiB', '1.5TiB', or a plain number of bytes."""
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
             "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
    found = re.fullmatch(r"(\d+(?:\.\d+)?)([A-Z]*)", text.strip().upper().replace(" ", ""))
    if found is None or found.group(2) not in units:
        raise ValueError(f"{text!r} is not a size: write e.g. 80GiB, 141GB or 85899345920")
    return int(float(found.group(1)) * units[found.group(2)])


def gib(num_bytes: float) -> str:
    return f"{num_bytes / 2**30:,.1f} GiB"


def make_plan(config: RunConfig, hf_config: dict[str, Any], *, num_gpus: int, gpu_bytes: int,
              reserve: float = 0.1) -> Plan:
    shape = read_shape(hf_config)
    params = count_params(shape)
    usable = int(gpu_bytes * (1 - reserve))
    options = config.rollout.engine_options
    engine_tensor = int(options.get("tp_size", 1)) if config.rollout.engine_factory else 1
    seq_len = int(options.get("max_seq_len") or config.rollout.engine.max_seq_len)
    batch = (int(options.get("max_concurrency", config.rollout.engine.max_batch_size))
             if config.rollout.engine_factory else config.rollout.engine.max_batch_size)
    # cuda_ipc moves weights within one GPU: engine and trainer share it, as colocated does
    colocated = config.placement.mode == "colocated" or config.weights.transport == "cuda_ipc"
    engine_gpus = config.rollout.num_producers * engine_tensor
    trainer_gpus = num_gpus if colocated else num_gpus - engine_gpus
    dtype_bytes = 2 if config.rollout.engine_factory else DTYPE_BYTES[config.rollout.engine.dtype]
    embedded = config.rollout.engine
    kv_tokens = kv_fraction = None
    if not config.rollout.engine_factory:  # the embedded engine's paged pool (block 0: scratch)
        if embedded.kv_blocks is not None:
            kv_tokens = (embedded.kv_blocks - 1) * embedded.kv_block_size
        kv_fraction = embedded.kv_memory_fraction
    engine = engine_memory(shape, params, tensor=engine_tensor, batch=batch, seq_len=seq_len,
                           dtype_bytes=dtype_bytes, kv_tokens=kv_tokens, kv_fraction=kv_fraction,
                           gpu_bytes=gpu_bytes)
    overflows: list[str] = []
    if engine_gpus > num_gpus:
        overflows.append(f"GPUs: the engines alone need {engine_gpus} "
                         f"({config.rollout.num_producers} x tp_size {engine_tensor}), "
                         f"{engine_gpus - num_gpus} more than the {num_gpus} given")
    m = config.trainer.megatron
    if config.trainer.backend == "torch":
        return _torch_plan(config, shape, params, num_gpus=num_gpus, gpu_bytes=gpu_bytes,
                           usable=usable, engine=engine, engine_tensor=engine_tensor,
                           engine_gpus=engine_gpus, batch=batch, seq_len=seq_len,
                           colocated=colocated, overflows=overflows)
    model_parallel = m.tensor_parallel * m.pipeline_parallel
    parallel = trainer = None
    rows = 0
    if trainer_gpus < model_parallel:
        overflows.append(f"GPUs: the trainer needs tensor x pipeline = {model_parallel} GPUs "
                         f"but {max(trainer_gpus, 0)} are left after the engines' "
                         f"{engine_gpus}: give {model_parallel - trainer_gpus} more")
    elif (m.tensor_parallel * (trainer_gpus // model_parallel)) % m.expert_parallel:
        step = m.expert_parallel // math.gcd(m.expert_parallel, m.tensor_parallel)
        overflows.append(f"GPUs: expert parallel {m.expert_parallel} must divide tensor x data "
                         f"parallel, so the trainer's data-parallel size must be a multiple of "
                         f"{step}; its {trainer_gpus} GPUs give "
                         f"{trainer_gpus // model_parallel}: give it "
                         f"{step * model_parallel} GPUs or more")
    else:
        data = trainer_gpus // model_parallel
        parallel = Parallel(tensor=m.tensor_parallel, pipeline=m.pipeline_parallel,
                            expert=m.expert_parallel, data=data)
        minibatch = config.trainer.batch_size // config.trainer.minibatches
        rows = max(1, math.ceil(minibatch / data))
        if config.trainer.compute.micro_batch_rows is not None:
            rows = min(rows, config.trainer.compute.micro_batch_rows)
        trainer = trainer_memory(
            shape, params, parallel, rows=rows, seq_len=seq_len,
            num_microbatches=math.ceil(minibatch / data / rows), recompute=m.recompute,
            grad_bytes=4 if m.grad_dtype == "float32" else 2,
            logprob_chunk_tokens=config.trainer.compute.logprob_chunk_tokens)
        overflows += _memory_overflows(trainer, engine, colocated, usable)
    routing = _routing_bytes(shape, config.rollout.max_new_tokens)
    return Plan(
        model_type=shape.model_type, num_gpus=num_gpus, gpu_bytes=gpu_bytes, usable_bytes=usable,
        params=params, colocated=colocated, engine_gpus=engine_gpus, engine_tensor=engine_tensor,
        engine_batch=batch, trainer_gpus=trainer_gpus, parallel=parallel, trainer=trainer,
        engine=engine, rows_per_microbatch=rows, seq_len=seq_len,
        weight_sync_bytes=engine.weights * engine_tensor, routing_bytes_per_sample=routing,
        routing_bytes_per_version=routing * config.trainer.batch_size,
        overflows=tuple(overflows))


def _torch_plan(config: RunConfig, shape: ModelShape, params: ParamCounts, *, num_gpus: int,
                gpu_bytes: int, usable: int, engine: EngineMemory, engine_tensor: int,
                engine_gpus: int, batch: int, seq_len: int, colocated: bool,
                overflows: list[str]) -> Plan:
    """The torch backend: one GPU, or FSDP2 over every trainer GPU (sharding weights,
    gradients and optimizer state; each GPU trains its share of the minibatch)."""
    if not config.trainer.megatron.is_single_gpu:
        raise ValueError("[trainer.megatron] sizes apply to trainer.backend = \"megatron\"; "
                         "this recipe uses the torch backend: remove them")
    compute = config.trainer.compute
    trainer_gpus = num_gpus if colocated else num_gpus - engine_gpus
    data = max(trainer_gpus, 1) if compute.fsdp else 1
    minibatch = config.trainer.batch_size // config.trainer.minibatches
    rows = max(1, math.ceil(minibatch / data))
    if compute.micro_batch_rows is not None:
        rows = min(rows, compute.micro_batch_rows)
    trainer = None
    if trainer_gpus < 1:
        overflows.append(f"GPUs: the trainer needs 1 GPU but none is left after the engines' "
                         f"{engine_gpus}: give 1 more")
    else:
        trainer = torch_learner_memory(
            shape, params, rows=rows, seq_len=seq_len,
            recompute=compute.checkpoints_at(seq_len), data=data,
            logprob_chunk_tokens=compute.logprob_chunk_tokens)
        overflows += _memory_overflows(trainer, engine, colocated, usable)
    routing = _routing_bytes(shape, config.rollout.max_new_tokens)
    return Plan(
        model_type=shape.model_type, num_gpus=num_gpus, gpu_bytes=gpu_bytes, usable_bytes=usable,
        params=params, colocated=colocated, engine_gpus=engine_gpus, engine_tensor=engine_tensor,
        engine_batch=batch, trainer_gpus=trainer_gpus,
        parallel=Parallel(data=data) if trainer else None, trainer=trainer, engine=engine,
        rows_per_microbatch=rows, seq_len=seq_len,
        weight_sync_bytes=engine.weights * engine_tensor, routing_bytes_per_sample=routing,
        routing_bytes_per_version=routing * config.trainer.batch_size,
        overflows=tuple(overflows))


def _memory_overflows(trainer: TrainerMemory, engine: EngineMemory, colocated: bool,
                      usable: int) -> list[str]:
    def terms(memory: TrainerMemory | EngineMemory) -> str:
        fields = [(k, v) for k, v in msgspec.structs.asdict(memory).items()
                  if k not in ("stage", "params", "kv_bytes_per_token", "not_live") and v]
        top = sorted(fields, key=lambda kv: -kv[1])[:2]
        return ", ".join(f"{k.replace('_', ' ')} {gib(v)}" for k, v in top)

    if colocated:
        total = trainer.total + engine.total
        if total > usable:
            return [f"colocated trainer + engine need {gib(total)} per GPU, "
                    f"{gib(total - usable)} over the usable {gib(usable)} (largest: trainer "
                    f"{terms(trainer)}; engine {terms(engine)})"]
        return []
    out = []
    if trainer.total > usable:
        out.append(f"trainer needs {gib(trainer.total)} per GPU (pipeline stage "
                   f"{trainer.stage}), {gib(trainer.total - usable)} over the usable "
                   f"{gib(usable)}: largest {terms(trainer)}")
    if engine.total > usable:
        out.append(f"engine needs {gib(engine.total)} per GPU, {gib(engine.total - usable)} "
                   f"over the usable {gib(usable)}: largest {terms(engine)}")
    return out


def _routing_bytes(shape: ModelShape, response_tokens: int) -> int:
    if not shape.is_moe:
        return 0
    entries = response_tokens * len(shape.moe_layers)
    return int(packing(shape.num_experts, shape.top_k).row_bytes(entries))
