"""Producer-side admission: throttling exactly at the capacity boundary, release when the trainer
advances, and a small producers-and-trainer simulation that must neither stall nor go stale."""

from __future__ import annotations

from collections import deque

import pytest

from streamrl.staleness import (
    THROTTLED,
    UNLIMITED,
    AdmissionControl,
    AdmissionState,
    ImportanceWeighted,
    MaxLag,
    Synchronous,
    TimeWindow,
)
from tests.staleness.crafted import assert_explained, info


def state(trainer_version: int, num_started: int, *, batch_size: int = 8, num_producers: int = 1,
          num_in_flight: int = 0, producer_rank: int | None = None) -> AdmissionState:
    return AdmissionState(trainer_version=trainer_version, num_started=num_started,
                          num_in_flight=num_in_flight, batch_size=batch_size,
                          num_producers=num_producers, now_ms=0, producer_rank=producer_rank)


def test_throttles_exactly_at_the_boundary_and_releases_when_the_trainer_advances():
    policy = AdmissionControl(max_staleness=1)
    # Budget at version 0: (0 + 1 + 1) * 8 = 16 samples.
    admissions = [policy.admit(state(0, n)) for n in range(18)]
    assert_explained(admissions)
    assert [a.capacity for a in admissions[:16]] == list(range(16, 0, -1))
    assert all(a.allowed for a in admissions[:16])
    full = policy.admit(state(0, 16, num_in_flight=5))
    assert not full.allowed and full.capacity == 0 and full.reason_code == THROTTLED
    assert "share 16" in full.detail and "5 in flight" in full.detail
    assert "resumes at trainer version 1" in full.detail
    released = policy.admit(state(1, 16))
    assert released.allowed and released.capacity == 8
    assert not policy.admit(state(0, 17)).allowed  # over the budget stays throttled


def test_per_producer_shares_round_up_so_the_trainer_can_fill_a_batch():
    # 3 producers, batch 8, on-policy: each may start ceil(8 / 3) = 3, 9 in all >= 8.
    policy = Synchronous()
    assert policy.admit(state(0, 2, num_producers=3)).capacity == 1
    blocked = policy.admit(state(0, 3, num_producers=3))
    assert not blocked.allowed and "resumes at trainer version 1" in blocked.detail
    assert policy.admit(state(1, 3, num_producers=3)).capacity == 3  # ceil(16 / 3) - 3
    assert AdmissionControl(max_staleness=2).admit(state(4, 0, num_producers=4)).capacity == 14


def test_producer_ranks_split_the_budget_exactly():
    policy = AdmissionControl(max_staleness=1)
    for version in range(4):
        shares = [policy.admit(state(version, 0, num_producers=3, producer_rank=r)).capacity
                  for r in range(3)]
        assert sum(shares) == (version + 2) * 8 and max(shares) - min(shares) <= 1
    assert policy.admit(state(0, 0, num_producers=3)).capacity == 6  # no rank: ceil(16 / 3)


@pytest.mark.parametrize("rank", [None, 0, 1, 2, 4])
def test_resume_version_in_the_detail_is_the_first_that_admits(rank):
    for num_producers in (1, 2, 3, 5):
        if rank is not None and rank >= num_producers:
            continue
        for max_staleness in (0, 1, 3):
            policy = AdmissionControl(max_staleness=max_staleness)
            for started in range(40):
                kwargs = {"num_producers": num_producers, "producer_rank": rank}
                a = policy.admit(state(0, started, **kwargs))
                if a.allowed:
                    continue
                resume = int(a.detail.rsplit(" ", 1)[1])
                assert policy.admit(state(resume, started, **kwargs)).allowed
                assert not policy.admit(state(resume - 1, started, **kwargs)).allowed


@pytest.mark.parametrize("policy", [MaxLag(max_lag=0), ImportanceWeighted(),
                                    TimeWindow(window_s=1.0)], ids=repr)
def test_policies_without_admission_never_throttle(policy):
    a = policy.admit(state(0, 10**9))
    assert a.allowed and a.capacity == UNLIMITED


def test_admission_state_refuses_impossible_counts():
    with pytest.raises(ValueError, match="batch_size and num_producers"):
        state(0, 0, batch_size=0)
    with pytest.raises(ValueError, match="num_in_flight <= num_started"):
        state(0, 1, num_in_flight=2)
    with pytest.raises(ValueError, match="producer_rank must be in"):
        state(0, 0, num_producers=2, producer_rank=2)


def simulate(policy, *, batch_size: int, num_producers: int, gen_ticks: int, num_ticks: int,
             train_ticks: int = 2, ranked: bool = True):
    """Each tick, every producer starts as many samples as admitted (up to batch_size) with the
    current weights; a sample arrives gen_ticks later; every train_ticks the trainer judges
    arrivals in order and trains one batch of batch_size kept samples. Producers are faster than
    the trainer, so admission must throttle them. Producers learn of their rejected samples (the
    Rejected events) and stop counting them, as AdmissionState asks."""
    version, tick = 0, 0
    started = [0] * num_producers
    in_flight: deque[tuple[int, int, object]] = deque()  # (arrival tick, producer, sample)
    arrived: deque[tuple[int, object]] = deque()
    kept_lags: list[int] = []
    num_dropped = num_throttled = 0
    for tick in range(num_ticks):
        for p in range(num_producers):
            busy = sum(1 for _, q, _ in in_flight if q == p)
            a = policy.admit(state(version, started[p], batch_size=batch_size,
                                   num_producers=num_producers, num_in_flight=busy,
                                   producer_rank=p if ranked else None))
            if not a.allowed:
                num_throttled += 1
                continue
            for _ in range(min(a.capacity, batch_size)):
                started[p] += 1
                in_flight.append((tick + gen_ticks, p, info(f"{p}-{started[p]}", version)))
        while in_flight and in_flight[0][0] <= tick:
            _, p, sample = in_flight.popleft()
            arrived.append((p, sample))
        if tick % train_ticks:
            continue
        batch: list[tuple[int, object]] = []
        while arrived and len(batch) < batch_size:
            p, sample = arrived.popleft()
            verdict = policy.judge(sample, version, tick)
            if verdict.action == "keep":
                batch.append((p, sample))
            else:
                assert verdict.reason_code and verdict.detail
                num_dropped += 1
                started[p] -= 1  # rejected: will never be trained
        if len(batch) == batch_size:
            kept_lags += [sample.lag(version) for _, sample in batch]
            version += 1
        else:  # a partial batch waits for more arrivals, in order
            arrived.extendleft(reversed(batch))
    return version, kept_lags, num_dropped, num_throttled


@pytest.mark.parametrize("num_producers", [1, 2, 3, 4])
@pytest.mark.parametrize("policy", [AdmissionControl(max_staleness=1), Synchronous()], ids=repr)
def test_admission_bounds_lag_without_drops(policy, num_producers):
    version, lags, num_dropped, num_throttled = simulate(
        policy, batch_size=8, num_producers=num_producers, gen_ticks=3, num_ticks=300)
    assert version > 50 and num_throttled > 0  # producers were held back, the trainer was not
    bound = getattr(policy, "max_staleness", 0)
    assert num_dropped == 0 and max(lags) == bound


@pytest.mark.parametrize("policy", [AdmissionControl(max_staleness=1), Synchronous()], ids=repr)
def test_unranked_producers_never_stall_and_overshoot_a_little(policy):
    # 3 producers do not divide batch 8; without ranks each rounds its share up.
    version, lags, num_dropped, _ = simulate(policy, batch_size=8, num_producers=3,
                                             gen_ticks=2, num_ticks=300, ranked=False)
    assert version > 50 and max(lags) <= getattr(policy, "max_staleness", 0)
    assert 0 < num_dropped <= 2 * version  # at most num_producers - 1 a version


def test_without_admission_fast_producers_waste_work_on_stale_samples():
    version, _, num_dropped, num_throttled = simulate(
        MaxLag(max_lag=1), batch_size=8, num_producers=2, gen_ticks=3, num_ticks=300)
    assert num_throttled == 0 and num_dropped > version * 8  # more dropped than trained
