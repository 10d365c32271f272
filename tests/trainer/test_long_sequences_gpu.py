"""On CUDA: the planner's peak for the torch learner (bf16 autocast, fp32 master weights,
fused AdamW) against `torch.cuda.max_memory_allocated` of real steps at long rows, with and
without activation checkpointing, and the memory check against the GPU's free memory.
Skipped without a GPU."""

from __future__ import annotations

import msgspec
import pytest
import torch

from streamrl.consumers.trainer import decoupled_ppo, grpo
from streamrl.consumers.trainer.learner import Learner, LearnerSetup
from streamrl.consumers.trainer.memory import TrainerMemoryError, check_memory
from streamrl.models import CausalLM, ModelConfig
from streamrl.plan.learner import learner_peak
from streamrl.recipe.config import RunConfig, TrainerSection
from streamrl.recipe.trainer import AlgorithmConfig, ComputeConfig

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

RAW = {"model_type": "qwen3", "vocab_size": 32000, "hidden_size": 512,
       "intermediate_size": 1536, "num_hidden_layers": 8, "num_attention_heads": 8,
       "num_key_value_heads": 4, "head_dim": 64, "tie_word_embeddings": False,
       "rope_theta": 1e6, "max_position_embeddings": 16384}
QWEN3_8B = {**RAW, "vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 12288,
            "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8,
            "head_dim": 128}
ROWS, PROMPT, RESPONSE = 2, 512, 3584


def _recipe(compute: dict, *, seq: int, rows: int) -> RunConfig:
    return msgspec.convert({
        "run": {"name": "gpu"}, "model": {"init": "a:b"},
        "data": {"tokenizer": "a:b", "prompts": "a:b", "samples_per_prompt": rows},
        "rollout": {"reward": "a:b", "engine": {"max_seq_len": seq}},
        "trainer": {"batch_size": rows, "compute": compute}}, RunConfig)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_predicted_peak_brackets_the_measured_one(checkpointing: bool) -> None:
    from bench.trainer_mfu import samples

    compute = {"device": "cuda", "precision": "bf16",
               "activation_checkpointing": checkpointing}
    torch.manual_seed(0)
    learner = Learner(CausalLM(ModelConfig.from_hf_dict(RAW)), LearnerSetup(
        trainer=TrainerSection(lr=1e-6, batch_size=ROWS, algorithm=AlgorithmConfig(),
                               compute=ComputeConfig(**compute)),
        temperature=1.0, advantage=grpo, loss=decoupled_ppo))
    batch = samples(ROWS, PROMPT, RESPONSE, RAW["vocab_size"])
    learner.step(batch, [1.0] * ROWS, version=0)  # Adam's state exists after it
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    learner.step(batch, [1.0] * ROWS, version=1)
    torch.cuda.synchronize()
    measured = torch.cuda.max_memory_allocated()
    plan = learner_peak(_recipe(compute, seq=PROMPT + RESPONSE, rows=ROWS), RAW)
    assert plan.checkpointing == checkpointing
    ratio = plan.memory.total / measured
    print(f"checkpointing={checkpointing}: plan {plan.memory.total / 2**30:.3f} GiB, "
          f"measured {measured / 2**30:.3f} GiB, plan/measured {ratio:.3f}")
    assert 0.85 <= ratio <= 1.5, ratio


def test_a_recipe_too_large_for_the_gpu_is_refused_before_anything_trains() -> None:
    compute = {"device": "cuda", "precision": "bf16"}
    with pytest.raises(TrainerMemoryError, match="is available \\(free on cuda\\)"):
        check_memory(_recipe(compute, seq=32768, rows=64), QWEN3_8B)
    check_memory(_recipe(compute, seq=PROMPT + RESPONSE, rows=ROWS), RAW)  # fits
