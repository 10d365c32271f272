"""Trainer-side verdicts of every built-in policy on crafted streams."""

from __future__ import annotations

import random

import msgspec
import pytest

from streamrl.staleness import (
    STALE_LAG,
    STALE_TIME,
    AdmissionControl,
    ImportanceWeighted,
    MaxLag,
    Synchronous,
    TimeWindow,
)
from tests.staleness.crafted import assert_explained, info

ALL_POLICIES = [MaxLag(max_lag=1), MaxLag(max_lag=1, on_stale="requeue"),
                AdmissionControl(max_staleness=1), ImportanceWeighted(max_lag=1, decay=0.5),
                TimeWindow(window_s=1.0), Synchronous()]

# Trainer at version 5; samples arrive late and out of version order, one newer than the trainer.
LATE_OUT_OF_ORDER = [info("a", 5), info("b", 3), info("c", 4), info("d", 1), info("e", 7),
                     info("f", 2), info("g", 5)]


def actions(policy, stream, trainer_version=5, now_ms=0):
    verdicts = [policy.judge(s, trainer_version, now_ms) for s in stream]
    assert_explained(verdicts)
    return "".join(v.action[0] for v in verdicts)  # k / d / r per sample


def test_max_lag_keeps_up_to_the_bound_in_any_arrival_order():
    # lags:                                                  0 2 1 4 -2 3 0
    assert actions(MaxLag(max_lag=2), LATE_OUT_OF_ORDER) == "kkkdkdk"
    assert actions(MaxLag(max_lag=2, on_stale="requeue"), LATE_OUT_OF_ORDER) == "kkkrkrk"
    assert actions(MaxLag(max_lag=0), LATE_OUT_OF_ORDER) == "kdddkdk"
    verdict = MaxLag(max_lag=2).judge(info("d", 1), 5, 0)
    assert verdict.reason_code == STALE_LAG
    assert "lag 4" in verdict.detail and "max_lag 2" in verdict.detail and "'d'" in verdict.detail


def test_lag_counts_from_the_oldest_token_version():
    # Weights changed mid-sample: started at 1, first token from 3, last token from 5.
    mid = info("mid", 1, min_version=3, max_version=5)
    assert mid.lag(5) == 2
    assert MaxLag(max_lag=2).judge(mid, 5, 0).action == "keep"
    # Mostly fresh tokens do not save a sample whose oldest token is too old.
    old_head = info("head", 2, max_version=5)
    assert MaxLag(max_lag=2).judge(old_head, 5, 0).action == "drop"


@pytest.mark.parametrize("versions", [(3, 2, 4), (2, 1, 1), (-1, 0, 0)])
def test_sample_versions_must_be_ordered(versions):
    policy_version, low, high = versions
    with pytest.raises(ValueError, match="policy_version <= min_version <= max_version"):
        info("bad", policy_version, min_version=low, max_version=high)


@pytest.mark.parametrize("policy", ALL_POLICIES, ids=lambda p: repr(p))
def test_samples_newer_than_the_trainer_are_kept(policy):
    # A trainer restarted from checkpoint 3 after announcing 6: producers still sample with 6.
    newer = info("new", 6, finished_at_ms=0)
    verdict = policy.judge(newer, 3, 0)
    assert verdict.action == "keep" and verdict.weight == 1.0


@pytest.mark.parametrize("policy", ALL_POLICIES, ids=lambda p: repr(p))
def test_verdicts_are_pure_so_duplicates_and_replays_agree(policy):
    stream = [*LATE_OUT_OF_ORDER, *LATE_OUT_OF_ORDER[:3]]  # redelivered duplicates
    # Finish times by version, so the time window also sees a mix of fresh and old samples.
    stream = [msgspec.structs.replace(s, finished_at_ms=1000 * s.min_version) for s in stream]
    first = {s.sample_id: policy.judge(s, 5, 4500) for s in stream}
    for s in stream:  # duplicates get the same verdict as their first delivery
        assert policy.judge(s, 5, 4500) == first[s.sample_id]
    shuffled = stream[:]
    random.Random(0).shuffle(shuffled)
    assert {s.sample_id: policy.judge(s, 5, 4500) for s in shuffled} == first
    rebuilt = type(policy)(**{f: getattr(policy, f) for f in policy.__struct_fields__})
    assert {s.sample_id: rebuilt.judge(s, 5, 4500) for s in stream} == first


def test_admission_control_trainer_side_is_a_lag_safety_net():
    policy = AdmissionControl(max_staleness=2)
    assert actions(policy, LATE_OUT_OF_ORDER) == "kkkdkdk"
    assert "despite admission control" in policy.judge(info("d", 1), 5, 0).detail


def test_importance_weighted_decays_the_loss_weight_per_version():
    policy = ImportanceWeighted(decay=0.5)
    weights = [policy.judge(s, 5, 0).weight for s in LATE_OUT_OF_ORDER]
    assert weights == [1.0, 0.25, 0.5, 0.0625, 1.0, 0.125, 1.0]
    assert actions(policy, LATE_OUT_OF_ORDER) == "kkkkkkk"
    assert {ImportanceWeighted().judge(s, 5, 0).weight for s in LATE_OUT_OF_ORDER} == {1.0}
    capped = ImportanceWeighted(max_lag=2, decay=0.5)
    assert actions(capped, LATE_OUT_OF_ORDER) == "kkkdkdk"
    assert capped.judge(info("b", 3), 5, 0).weight == 0.25


class Clock:
    """An injected clock: the test decides what time it is."""

    def __init__(self, now_ms: int) -> None:
        self.now_ms = now_ms

    def advance(self, ms: int) -> int:
        self.now_ms += ms
        return self.now_ms


def test_time_window_reads_only_the_clock_it_is_given():
    policy = TimeWindow(window_s=5.0)
    clock = Clock(10_000)
    on_edge = info("edge", 0, finished_at_ms=5_000)
    just_past = info("past", 0, finished_at_ms=4_999)
    future = info("future", 0, finished_at_ms=12_000)  # producer clock ahead of ours: kept
    assert actions(policy, [on_edge, just_past, future], now_ms=clock.now_ms) == "kdk"
    verdict = policy.judge(just_past, 0, clock.now_ms)
    assert verdict.reason_code == STALE_TIME and "5001 ms" in verdict.detail
    # The same sample, judged later, falls out of the window; lag never matters.
    assert actions(policy, [on_edge, future], trainer_version=99,
                   now_ms=clock.advance(1)) == "dk"
    # Replay passes the recorded clock again and gets the same verdict.
    assert actions(policy, [on_edge], now_ms=clock.advance(-1)) == "k"


def test_synchronous_keeps_only_on_policy_samples():
    assert actions(Synchronous(), LATE_OUT_OF_ORDER) == "kdddkdk"
    mid = info("mid", 4, min_version=4, max_version=5)  # one token from the previous version
    assert Synchronous().judge(mid, 5, 0).action == "drop"


@pytest.mark.parametrize("make, message", [
    (lambda: MaxLag(max_lag=-1), "max_lag must be >= 0"),
    (lambda: AdmissionControl(max_staleness=-1), "max_staleness must be >= 0"),
    (lambda: ImportanceWeighted(decay=0.0), "decay must be in"),
    (lambda: ImportanceWeighted(decay=1.5), "decay must be in"),
    (lambda: ImportanceWeighted(max_lag=-2), "max_lag must be >= 0 or None"),
    (lambda: TimeWindow(window_s=0), "window_s must be > 0"),
])
def test_bad_options_are_refused_when_built(make, message):
    with pytest.raises(ValueError, match=message):
        make()
