"""`learner_peak`: the torch learner's peak memory on its device for the worst step a recipe
allows, from `torch_learner_memory` (memory.py). The trainer checks it against the device
before its first step (streamrl/consumers/trainer/memory.py, `check_peak`), and `load_recipe`
already does when `memory_limit` is a size and the recipe names its checkpoint (`model.path`).

The worst micro-batch: a row is at most `pack_row_tokens` tokens when packing, else the longest
sequence the engine keeps (`max_seq_len`: prompt + response); a micro-batch is
`micro_batch_rows` rows of that length, or as many as `micro_batch_tokens` allows (at least
one), or the whole minibatch (batch_size / minibatches samples, on every FSDP rank alike).
Activation checkpointing is what `activation_checkpointing` gives at that length. The proximal
and reference forwards run without grad, over the same micro-batches under `micro_batch_tokens`
(otherwise over the whole batch: their transient is one layer's, left out). A KL reference
kept by the trainer doubles the weights. FSDP's sharding and a LoRA run's smaller
optimizer state are not taken off: the figure is an upper bound there.
"""

from __future__ import annotations

from typing import Any

import msgspec

from streamrl.plan.memory import TrainerMemory, torch_learner_memory
from streamrl.plan.params import count_params
from streamrl.plan.shape import read_shape
from streamrl.recipe.config import RunConfig

CPU_LOGPROB_CHUNK = 1024
"""Tokens per chunk of the CPU learner's log-softmax (`token_logprobs`'s default)."""


class LearnerPeak(msgspec.Struct, kw_only=True, frozen=True):
    memory: TrainerMemory
    rows: int
    """Rows of the worst micro-batch."""
    row_tokens: int
    """Tokens of its longest row (padding included)."""
    checkpointing: bool


def worst_row_tokens(config: RunConfig) -> int:
    """The longest row a batch of this recipe can hold."""
    pack = config.trainer.algorithm.batch.pack_row_tokens
    options = config.rollout.engine_options
    longest = int(options.get("max_seq_len") or config.rollout.engine.max_seq_len)
    return pack if pack is not None else longest


def learner_peak(config: RunConfig, hf_config: dict[str, Any]) -> LearnerPeak:
    """The predicted peak (bytes, `memory.total`) of the recipe's worst training step."""
    compute, trainer = config.trainer.compute, config.trainer
    shape = read_shape(hf_config)
    seq_len = worst_row_tokens(config)
    rows = trainer.batch_size // trainer.minibatches
    if compute.micro_batch_rows is not None:
        rows = min(rows, compute.micro_batch_rows)
    if compute.micro_batch_tokens is not None:
        rows = min(rows, max(1, compute.micro_batch_tokens // seq_len))
    checkpointing = compute.checkpoints_at(seq_len)
    memory = torch_learner_memory(
        shape, count_params(shape), rows=rows, seq_len=seq_len, recompute=checkpointing,
        logprob_chunk_tokens=(compute.logprob_chunk_tokens if compute.on_gpu
                              else CPU_LOGPROB_CHUNK),
        autocast=compute.precision != "fp32",
        packed=trainer.algorithm.batch.pack_row_tokens is not None)
    algorithm = trainer.algorithm
    if algorithm.loss_config.kl_coef > 0 and algorithm.kl.reference == "trainer":
        # the frozen reference policy: a second fp32 copy of the weights
        memory = msgspec.structs.replace(memory, weights=memory.weights * 2)
    return LearnerPeak(memory=memory, rows=max(rows, 1), row_tokens=seq_len,
                       checkpointing=checkpointing)



class TrainerMemoryError(ValueError):
    """The worst step the recipe allows would not fit the trainer's device."""


def check_peak(config: RunConfig, hf_config: dict[str, Any], *, limit: int,
               where: str) -> None:
    """Raise `TrainerMemoryError` when `learner_peak` exceeds `limit` bytes (`where` says
    whose limit it is), naming the terms and what to change."""
    from streamrl.plan.placement import gib  # placement imports the recipe, as this does

    peak = learner_peak(config, hf_config)
    if peak.memory.total <= limit:
        return
    m, compute = peak.memory, config.trainer.compute
    fixes = []
    if not peak.checkpointing:
        fixes.append("activation_checkpointing = true")
    if peak.rows > 1 or compute.micro_batch_tokens is None:
        fixes.append(f"a smaller micro-batch (micro_batch_tokens = {max(peak.row_tokens, 1)})")
    fixes.append("shorter rows (rollout.max_new_tokens, rollout.engine.max_seq_len)")
    raise TrainerMemoryError(
        f"the trainer's worst step would need {gib(m.total)} but {gib(limit)} is available "
        f"({where}): {peak.rows} row(s) x {peak.row_tokens} tokens per micro-batch, "
        f"activation checkpointing {'on' if peak.checkpointing else 'off'}; weights "
        f"{gib(m.weights)}, optimizer {gib(m.optimizer)}, gradients {gib(m.gradients)}, "
        f"activations {gib(m.activations)}, logits {gib(m.logits)}. In [trainer.compute] set "
        f"{' or '.join(fixes)}; or train on a larger device")
