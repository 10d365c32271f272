"""Built-in sample filters (`rollout.filter`), each a `SampleFilter(FilterInput) -> FilterOutput`
named in the recipe by a short name of `streamrl.recipe.filters.FILTERS` or by import path.

A filtered group is never published: the producer records `Rejected(subject=group id,
reason_code=FilterOutput.code)` in the same transaction that commits past its prompt, frees its
admission capacity and goes on with the next prompt, so the trainer's batches fill with groups
that passed (audit and the staleness report count the rejections by code).
"""

from __future__ import annotations

from streamrl.hooks.rollout import FilterInput, FilterOutput

ZERO_VARIANCE = "zero_variance"


def zero_variance(group: FilterInput) -> FilterOutput:
    """DAPO's dynamic sampling (Yu et al., 2025, "DAPO", eq. 11: keep a group only if
    0 < |{correct}| < G): a group whose rewards are all equal has group-relative advantage 0 for
    every sample, so it would cost a batch slot and teach nothing. Kept when any two rewards
    differ; otherwise rejected with code "zero_variance"."""
    rewards = group.rewards
    if len(set(rewards)) > 1:
        return FilterOutput(keep=True)
    value = rewards[0] if rewards else float("nan")
    return FilterOutput(keep=False, code=ZERO_VARIANCE,
                        reason=f"all {len(rewards)} rewards are {value:g}")
