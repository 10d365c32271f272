"""Rewards made of rewards, built by `streamrl.recipe.rewards.build_reward` from the recipe:

    reward = [{ name = "math" }, { name = "format", weight = 0.1 }]    # Weighted
    reward_by_source = { "openai/gsm8k" = "gsm8k" }                   # BySource

`Weighted` records every term in `reward_details` under its label (its own details under
"label.key"), so the parts of a sum stay visible in the trajectory. A term that raises makes the
whole call raise, naming the term: the sample is then scored 0 as an error (sandbox.py), never
half-scored.
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
        return RewardOutput(reward=total, details=details, status="; ".join(statuses))


class BySource(msgspec.Struct, kw_only=True, frozen=True):
    table: dict[str, Any]  # data_source -> RewardFn
    default: Any  # RewardFn for other sources, or rows without one

    def pick(self, sample: RewardInput) -> RewardFn:
        source = sample.metadata.get("data_source")
        return self.table.get(source, self.default) if isinstance(source, str) else self.default

    def __call__(self, sample: RewardInput) -> RewardOutput:
        return self.pick(sample)(sample)
