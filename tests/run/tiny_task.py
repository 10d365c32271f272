"""A tiny task for testing the run plumbing (not learning): echo the prompt's first digit.

Hooks for `tests/run/tiny.toml`; the model is a random-init 1-layer Qwen3 with a character vocab.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from streamrl.hooks.rollout import RewardInput, RewardOutput, RolloutInput, RolloutSample
from streamrl.hooks.run import ModelInitRequest, PromptRequest, PromptSpec
from streamrl.hooks.train import TrainStepInput
from streamrl.models import CausalLM, ModelConfig, save_checkpoint
from streamrl.staleness import SampleInfo, StalenessPolicy, Verdict

CHARS = "0123456789="


class Tokenizer:
    vocab_size = len(CHARS) + 3
    pad_token_id, bos_token_id, stop_token_id = 0, 1, 2

    def encode(self, text: str, *, bos: bool = False, stop: bool = False) -> npt.NDArray[np.int32]:
        ids = [1] * bos + [3 + CHARS.index(c) for c in text] + [2] * stop
        return np.asarray(ids, dtype=np.int32)

    def decode(self, tokens: Iterable[int] | npt.NDArray[np.integer]) -> str:
        return "".join(CHARS[t - 3] if 3 <= t < self.vocab_size else "" for t in
                       np.asarray(tokens).reshape(-1).tolist())


TOKENIZER = Tokenizer()


def prompts(request: PromptRequest) -> list[PromptSpec]:
    rng = np.random.default_rng(request.seed)
    out = []
    for i in range(request.num_prompts):
        digits = "".join(str(d) for d in rng.integers(0, 10, size=3))
        out.append(PromptSpec(prompt_id=f"echo-{i}", text=f"{digits}=",
                              metadata={"answer": digits[0]}))
    return out


def init(request: ModelInitRequest) -> Path:
    torch.manual_seed(request.seed)
    moe = (dict(model_type="qwen3_moe", num_experts=4, num_experts_per_tok=2,
                moe_intermediate_size=16) if request.moe else {"model_type": "qwen3"})
    config = ModelConfig(vocab_size=TOKENIZER.vocab_size, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         head_dim=16, max_position_embeddings=64, tie_word_embeddings=True,
                         **moe)
    save_checkpoint(CausalLM(config), request.out_dir)
    return request.out_dir


def reward(sample: RewardInput) -> RewardOutput:
    right = sample.response_text[:1] == sample.metadata["answer"]
    return RewardOutput(reward=float(right), status="correct" if right else "wrong")


class FirstPromptsOnly(StalenessPolicy, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A staleness policy whose trainer drops every sample of prompts "echo-<i>" with i >= `keep`:
    a run whose drops use its prompts up."""

    keep: int

    def judge(self, sample: SampleInfo, trainer_version: int, now_ms: int) -> Verdict:
        if int(sample.prompt_id.rsplit("-", 1)[1]) < self.keep:
            return Verdict.keep()
        return Verdict.drop("late_prompt", f"prompt {sample.prompt_id} is not among the first "
                                           f"{self.keep}")


def count_samples(step: TrainStepInput) -> dict[str, float]:
    """A training-step hook: its metric must show up in every TrainStep."""
    return {"hook_num_samples": float(len(step.sample_ids))}


async def two_turns(inp: RolloutInput) -> list[RolloutSample]:
    """A custom rollout: the model answers, the "environment" appends '=', the model answers
    again; the environment's token is not trained on (loss_mask False, logprob 0)."""
    out = []
    for k in range(inp.num_samples):
        first = await inp.generate(inp.prompt_tokens, inp.params(k))
        env = TOKENIZER.encode("=")
        second = await inp.generate(np.concatenate([first.prompt_tokens, first.response_tokens,
                                                    env]), inp.params(k))
        tokens = np.concatenate([first.response_tokens, env, second.response_tokens])
        out.append(RolloutSample(
            prompt_tokens=first.prompt_tokens, response_tokens=tokens.astype(np.int32),
            logprobs=np.concatenate([first.logprobs, [0.0], second.logprobs]).astype(np.float32),
            loss_mask=np.array([True] * len(first.response_tokens) + [False]
                               + [True] * len(second.response_tokens)),
            response_versions=np.concatenate([first.response_versions,
                                              second.response_versions[:1],
                                              second.response_versions]).astype(np.uint32),
            routed_experts=None, finish_reason=second.finish_reason, seed=first.seed,
            started_at=RolloutSample.from_generation(first).started_at,
            finished_at=RolloutSample.from_generation(second).finished_at))
    return out
