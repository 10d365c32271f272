"""The trainer's data path and RL math: batch assembly, advantages, losses, hook resolution.

    batch = build_batch(record_batches, BatchConfig())
    advantages = grpo(AdvantageInput.from_batch(batch))           # [B, S]
    out = decoupled_ppo(LossInput(logprobs=..., advantages=advantages, ...))
    out.loss.backward()
"""

from streamrl.consumers.trainer.advantages import (
    AdvantageFn,
    AdvantageInput,
    dr_grpo,
    grpo,
    make_group_normalized,
    reinforce_baseline,
)
from streamrl.consumers.trainer.batch import BatchConfig, TrainBatch, build_batch
from streamrl.consumers.trainer.losses import (
    LossConfig,
    LossFn,
    LossInput,
    LossOutput,
    decoupled_ppo,
    ppo_tis,
)
from streamrl.consumers.trainer.registry import (
    DEFAULT_ADVANTAGE,
    DEFAULT_LOSS,
    AlgorithmConfig,
    ResolveError,
    resolve,
    resolve_advantage,
    resolve_loss,
)

__all__ = [
    "DEFAULT_ADVANTAGE", "DEFAULT_LOSS", "AdvantageFn", "AdvantageInput", "AlgorithmConfig",
    "BatchConfig", "LossConfig", "LossFn", "LossInput", "LossOutput", "ResolveError",
    "TrainBatch", "build_batch", "decoupled_ppo", "dr_grpo", "grpo", "make_group_normalized",
    "ppo_tis", "reinforce_baseline", "resolve", "resolve_advantage", "resolve_loss",
]
