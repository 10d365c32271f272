"""Per-token (process) rewards through the combined rewards of a recipe: a weighted sum carries
the weighted sum of its terms' token rewards (a term without them counts its reward on the last
response token, where the trainer puts an outcome reward), a term with a list of the wrong
length is an error naming it, and a reward per data source passes its pick's through."""

from __future__ import annotations

import numpy as np
import pytest

from streamrl.hooks.rollout import RewardInput, RewardOutput
from streamrl.producers.rewards.combine import RewardTermError
from streamrl.recipe.rewards import RewardTerm, build_reward

HERE = "tests.producers.test_reward_combine_tokens"


def stepwise(sample: RewardInput) -> RewardOutput:
    """A process reward: 0.1 for each response token after the first; metadata["short"] makes
    its list one value short."""
    n = len(sample.response_tokens) - int(bool(sample.metadata.get("short")))
    tokens = tuple(0.1 * min(i, 1) for i in range(n))
    return RewardOutput(reward=sum(tokens), status="steps", token_rewards=tokens)


def sample(response: str = "5", **metadata: object) -> RewardInput:
    return RewardInput(
        prompt_id="p-1", prompt_text="question", prompt_tokens=np.zeros(2, np.int32),
        response_text=response, response_tokens=np.arange(4, dtype=np.int32),
        finish_reason="stop", metadata={"ground_truth": "5", **metadata})


WEIGHTED = (RewardTerm(name=f"{HERE}:stepwise", weight=2.0), RewardTerm(name="exact", weight=0.5))


def test_a_weighted_sum_carries_the_weighted_sum_of_its_terms_token_rewards() -> None:
    fn = build_reward(WEIGHTED, {})
    out = fn(sample("5"))
    assert out.token_rewards == pytest.approx((0.0, 0.2, 0.2, 0.2 + 0.5))  # exact's 1 at the end
    assert sum(out.token_rewards) == pytest.approx(out.reward) == pytest.approx(1.1)
    assert out.details == pytest.approx({"stepwise": 0.3, "exact": 1.0})
    wrong = fn(sample("4"))
    assert wrong.token_rewards == pytest.approx((0.0, 0.2, 0.2, 0.2))
    # no term with token rewards: an outcome reward only, as before
    assert build_reward((RewardTerm(name="exact"), RewardTerm(name="format", weight=0.1)),
                        {})(sample()).token_rewards is None


def test_a_term_with_the_wrong_number_of_token_rewards_is_an_error_naming_it() -> None:
    with pytest.raises(RewardTermError, match="stepwise: returned 3 token rewards for 4 "
                                              "response tokens"):
        build_reward(WEIGHTED, {})(sample(short=True))


def test_a_reward_per_data_source_passes_token_rewards_through() -> None:
    fn = build_reward("exact", {"steps": f"{HERE}:stepwise"})
    assert fn(sample(data_source="steps")).token_rewards == pytest.approx((0.0, 0.1, 0.1, 0.1))
    assert fn(sample(data_source="other")).token_rewards is None
