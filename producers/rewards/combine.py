"""Rewards made of rewards, built by `streamrl.recipe.rewards.build_reward` from the recipe:

    reward = [{ name = "math" }, { name = "format", weight = 0.1 }]    # Weighted
    reward_by_source = { "openai/gsm8k" = "gsm8k" }                   # BySource

`Weighted` records every term in `reward_details` under its label (its own details under
"label.key"), so the parts of a sum stay visible in the trajectory. A term that raises makes the
whole call raise, naming the term: the sample is then scored 0 as an error (sandbox.py), never
half-scored.

Per-token (process) rewards add up like the scalars: when any term returns `token_rewards`, the
sum's are the weighted sum of every term's, where a term without them counts its reward on the
last response token, the place the trainer puts an outcome reward (consumers/trainer/batch.py).
So `sum(token_rewards)` is `reward` whenever each term's own sum is its reward. A term whose list
is not one value per response token makes the call raise, naming the term. When no term has
them, neither has the sum (an outcome reward only).
"""

from __future__ import annotations

from typing import Any

import msgspec

from streamrl.hooks.rollout import RewardFn, RewardInput, RewardOutput


class RewardTermError(RuntimeError):
    """A term of a weighted reward raised; the message names the term."""


class Weighted(msgspec.Struct, kw_only=True, frozen=True):
    terms: tuple[tuple[str, float, Any], ...]  # (label, weight, RewardFn)

    def __call__(self, sample: RewardInput) -> RewardOutput:
        total, details, statuses = 0.0, {}, []
        outputs = []
        for label, weight, fn in self.terms:
            try:
                out = fn(sample)
            except Exception as error:
                raise RewardTermError(f"{label}: {type(error).__name__}: {error}") from error
            if not isinstance(out, RewardOutput):
                raise RewardTermError(f"{label}: returned {type(out).__name__}, expected "
                                      "RewardOutput")
            total += weight * out.reward
            details[label] = out.reward
            details.update({f"{label}.{key}": value for key, value in out.details.items()})
            statuses.append(f"{label}: {out.status}")
            outputs.append((label, weight, out))
        return RewardOutput(reward=total, details=details, status="; ".join(statuses),
                            token_rewards=_token_sum(outputs, len(sample.response_tokens)))


def _token_sum(outputs: list[tuple[str, float, RewardOutput]],
               num_tokens: int) -> tuple[float, ...] | None:
    """The weighted sum of the terms' per-token rewards (module docstring), or None."""
    if all(out.token_rewards is None for _, _, out in outputs):
        return None
    sums = [0.0] * num_tokens
    for label, weight, out in outputs:
        if out.token_rewards is None:
            if num_tokens:
                sums[-1] += weight * out.reward
            continue
        if len(out.token_rewards) != num_tokens:
            raise RewardTermError(f"{label}: returned {len(out.token_rewards)} token rewards "
                                  f"for {num_tokens} response tokens (one per token, stop "
                                  "token included)")
        for i, value in enumerate(out.token_rewards):
            sums[i] += weight * value
    return tuple(sums)


class BySource(msgspec.Struct, kw_only=True, frozen=True):
    table: dict[str, Any]  # data_source -> RewardFn
    default: Any  # RewardFn for other sources, or rows without one

    def pick(self, sample: RewardInput) -> RewardFn:
        source = sample.metadata.get("data_source")
        return self.table.get(source, self.default) if isinstance(source, str) else self.default

    def __call__(self, sample: RewardInput) -> RewardOutput:
        return self.pick(sample)(sample)
