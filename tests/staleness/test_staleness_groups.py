"""The group rule: one rejected sample rejects its whole GRPO group (unless turned off)."""

from __future__ import annotations

import pytest

from streamrl.staleness import (
    GROUP_REJECTED,
    STALE_LAG,
    ImportanceWeighted,
    MaxLag,
    StalenessConfig,
    build_policy,
)
from tests.staleness.crafted import DropOddVersions, assert_explained, group, info


def test_one_stale_sample_drops_its_group():
    samples = [info("g-s0", 5, group_id="g"), info("g-s1", 1, group_id="g"),
               info("g-s2", 4, group_id="g")]
    verdicts = MaxLag(max_lag=2).judge_group(samples, 5, 0)
    assert_explained(verdicts)
    assert [v.action for v in verdicts] == ["drop"] * 3
    assert [v.reason_code for v in verdicts] == [GROUP_REJECTED, STALE_LAG, GROUP_REJECTED]
    assert "sibling 'g-s1' was dropped" in verdicts[0].detail
    assert "lag 4" in verdicts[0].detail  # the cause's own detail travels with it
    assert all(v.weight == 0.0 for v in verdicts)


def test_requeue_policy_requeues_the_whole_group():
    samples = group("g", [5, 5, 2])
    verdicts = MaxLag(max_lag=1, on_stale="requeue").judge_group(samples, 5, 0)
    assert_explained(verdicts)
    assert [v.action for v in verdicts] == ["requeue"] * 3
    assert "was requeued" in verdicts[0].detail


def test_requeue_beats_drop_within_a_group():
    samples = group("g", [1, 3, 2])  # odd versions are rejected by the custom policy
    dropped = DropOddVersions().judge_group(samples, 5, 0)
    assert [v.action for v in dropped] == ["drop"] * 3
    assert "sibling 'g-s0'" in dropped[2].detail
    # v1 is dropped but v3 asks for its prompt to be regenerated: the group is requeued.
    mixed = build_policy(StalenessConfig(policy="tests.staleness.crafted:DropOddVersions",
                                         options={"requeue_from": 3}))
    verdicts = mixed.judge_group(samples, 5, 0)
    assert_explained(verdicts)
    assert [v.action for v in verdicts] == ["requeue"] * 3
    assert [v.reason_code for v in verdicts] == [GROUP_REJECTED, "odd", GROUP_REJECTED]
    assert "sibling 'g-s1' was requeued" in verdicts[0].detail


def test_whole_group_off_judges_each_sample_alone():
    samples = group("g", [5, 1, 4])
    verdicts = MaxLag(max_lag=2, whole_group=False).judge_group(samples, 5, 0)
    assert_explained(verdicts)
    assert [v.action for v in verdicts] == ["keep", "drop", "keep"]


def test_a_fresh_group_keeps_each_samples_own_weight():
    # Mid-sample version changes give siblings different oldest versions, hence weights.
    samples = [info("g-s0", 5, group_id="g"), info("g-s1", 3, max_version=5, group_id="g"),
               info("g-s2", 2, min_version=4, group_id="g")]
    verdicts = ImportanceWeighted(decay=0.5).judge_group(samples, 5, 0)
    assert [v.weight for v in verdicts] == [1.0, 0.25, 0.5]
    assert MaxLag(max_lag=2).judge_group([], 5, 0) == ()


def test_a_group_is_one_group():
    with pytest.raises(ValueError, match="several groups"):
        MaxLag(max_lag=1).judge_group([info("a", 1, group_id="x"), info("b", 1, group_id="y")],
                                      1, 0)
