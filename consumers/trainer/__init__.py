"""The trainer's data path and RL math: batch assembly, advantages, losses.

    batch = build_batch(record_batches, BatchConfig())
    advantages = grpo(batch.advantage_input())                     # [B, S]
    out = decoupled_ppo(LossInput(logprobs=..., advantages=advantages, ...))
    out.loss.backward()

The hook types (`AdvantageFn`, `LossFn` and their inputs) are defined in streamrl/hooks/train.py
and the config sections in streamrl/recipe/trainer.py; they are re-exported here, where the
built-ins that implement them live.
"""

from streamrl.consumers.trainer.advantages import (
    dr_grpo,
    grpo,
    make_group_normalized,
    reinforce_baseline,
)
from streamrl.consumers.trainer.batch import TrainBatch, build_batch
from streamrl.consumers.trainer.losses import decoupled_ppo, ppo_tis
from streamrl.hooks.train import AdvantageFn, AdvantageInput, LossFn, LossInput, LossOutput
from streamrl.recipe.trainer import AlgorithmConfig, BatchConfig, LossConfig

__all__ = [
    "AdvantageFn", "AdvantageInput", "AlgorithmConfig", "BatchConfig", "LossConfig", "LossFn",
    "LossInput", "LossOutput", "TrainBatch", "build_batch", "decoupled_ppo", "dr_grpo", "grpo",
    "make_group_normalized", "ppo_tis", "reinforce_baseline",
]
