"""User reward functions that misbehave in every way a reward worker must survive; named by
import path in tests/producers/test_reward_sandbox.py. The prompt's metadata["mode"] picks one."""

from __future__ import annotations

import os

from streamrl.hooks.rollout import RewardInput, RewardOutput


def misbehaving(sample: RewardInput) -> RewardOutput:
    match sample.metadata.get("mode", "ok"):
        case "raise":
            raise KeyError("the user's bug")
        case "hang":
            while True:  # never returns, never sleeps
                pass
        case "nan":
            return RewardOutput(reward=float("nan"))
        case "none":
            return None  # type: ignore[return-value]
        case "print":
            print("a chatty reward writes to stdout")
            return RewardOutput(reward=0.5, status="printed")
        case "exit":
            os._exit(3)
        case "tokens":  # per-token (process) rewards, one per response token
            return RewardOutput(reward=1.0, status="tokens",
                                token_rewards=tuple(0.25 * i for i in range(4)))
        case "nan_tokens":
            return RewardOutput(reward=1.0, token_rewards=(0.0, float("nan"), 0.0, 0.0))
        case _:
            return RewardOutput(reward=float(sample.response_text == "right"), status="scored")
