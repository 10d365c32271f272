"""The built-in staleness policies, each named in a recipe by import path:

    StalenessConfig(policy="streamrl.staleness:MaxLag", options={"max_lag": 2})

| policy             | trainer side (judge)                       | producer side (admit)         |
|--------------------|--------------------------------------------|-------------------------------|
| MaxLag             | keep lag <= max_lag, else drop or requeue  | always                        |
| AdmissionControl   | keep lag <= max_staleness, else drop       | AReaL's capacity rule         |
| ImportanceWeighted | keep (optional hard cap), weight decay^lag | always                        |
| TimeWindow         | keep if finished <= window_s ago           | always                        |
| Synchronous        | keep lag <= 0 (on-policy)                  | one version's batch at a time |

Lag is `trainer_version - min_version` (the oldest weights that sampled any token); samples newer
than the trainer (lag < 0) are always kept, see `StalenessPolicy`.
"""

from __future__ import annotations

from typing import Literal

from streamrl.staleness.base import (
    STALE_LAG,
    STALE_TIME,
    THROTTLED,
    Admission,
    AdmissionState,
    SampleInfo,
    StalenessPolicy,
    Verdict,
)


def _lag_detail(sample: SampleInfo, trainer_version: int, bound: str) -> str:
    return (f"sample {sample.sample_id!r}: lag {sample.lag(trainer_version)} (trainer version "
            f"{trainer_version}, oldest token version {sample.min_version}) > {bound}")


def version_budget(state: AdmissionState, max_staleness: int) -> Admission:
    """AReaL's admission rule, per producer: start a sample only while the count including it
    stays within this producer's share of the budget T = (trainer_version + max_staleness + 1) *
    batch_size.

    Why: the trainer trains batch_size samples per version, so the k-th sample ever started
    (0-based) is trained at version >= k // batch_size; if it started at trainer_version, its lag
    is at most max_staleness exactly when k < T. The count is therefore of samples that are, or
    may still be, trained: a sample the trainer dropped or requeued (its Rejected event) or a
    group the recipe's filter rejected gives its slot back, as AReaL counts accepted + running.
    Counting every sample ever started would stall a run for good once drops exceed
    max_staleness * batch_size: the budget would be spent on samples nobody trains. The producer
    keeps that count (`num_started`; producers/budget.py credits the trainer's drops and rebuilds
    it on a restart).

    The global rule counts every producer's samples, which would need a shared counter (a round
    trip through the log per start). Each producer instead owns the slots k < T with
    k % num_producers == producer_rank: a share of ceil((T - rank) / num_producers). The shares
    sum to exactly T, so the trainer can always fill its next batch and no sample overshoots.
    Without a rank, every producer takes the largest share (rank 0's): still never stalling
    (rounding down would stall a run with max_staleness 0 whenever num_producers does not divide
    batch_size), at the price of up to num_producers - 1 samples per version over the budget,
    which the trainer-side lag check drops. Shares also ignore speed: a fast producer waits at
    its share while a slow one finishes its own.

    Count in the unit producers start: a producer that starts whole GRPO groups passes
    batch_size and num_started in groups, so it never has room for only part of a group.
    """
    budget = (state.trainer_version + max_staleness + 1) * state.batch_size
    rank = state.producer_rank or 0
    share = -(-(budget - rank) // state.num_producers)  # ceil division
    capacity = share - state.num_started
    if capacity > 0:
        return Admission(allowed=True, capacity=capacity)
    # The smallest trainer version v whose share exceeds num_started.
    split = ("rounded up: no producer_rank" if state.producer_rank is None
             else f"rank {state.producer_rank}")
    resume = (state.num_started * state.num_producers + rank) // state.batch_size - max_staleness
    return Admission(
        allowed=False, capacity=0, reason_code=THROTTLED,
        detail=(f"started {state.num_started} ({state.num_in_flight} in flight) of this "
                f"producer's share {share} of the budget {budget} = (trainer version "
                f"{state.trainer_version} + max_staleness {max_staleness} + 1) * batch_size "
                f"{state.batch_size}, split over {state.num_producers} producers ({split}); "
                f"resumes at trainer version {resume}"))


class MaxLag(StalenessPolicy, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Keep samples at most `max_lag` versions behind the trainer; never throttles producers, so
    with slow training it wastes generation on samples it will drop (see AdmissionControl)."""

    max_lag: int
    """Largest lag kept; 0 is on-policy."""
    on_stale: Literal["drop", "requeue"] = "drop"
    """"drop" discards a stale sample; "requeue" returns its prompt for regeneration with
    fresh weights (no prompt is lost, at the cost of generating it again)."""

    def __post_init__(self) -> None:
        if self.max_lag < 0:
            raise ValueError(f"max_lag must be >= 0, got {self.max_lag}")

    def judge(self, sample: SampleInfo, trainer_version: int, now_ms: int) -> Verdict:
        if sample.lag(trainer_version) <= self.max_lag:
            return Verdict.keep()
        detail = _lag_detail(sample, trainer_version, f"max_lag {self.max_lag}")
        if self.on_stale == "requeue":
            return Verdict.requeue(STALE_LAG, detail)
        return Verdict.drop(STALE_LAG, detail)


class AdmissionControl(StalenessPolicy, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Bound staleness at the source (AReaL): producers stop starting samples that would be
    trained more than `max_staleness` versions after they started (`version_budget`). The
    trainer-side check is a safety net that should rarely fire: when a producer's loaded weights
    trail the announced version, or when producers without a rank round their shares up."""

    max_staleness: int = 1
    """Largest lag allowed; 1 overlaps generating the next batch with training on this one."""

    def __post_init__(self) -> None:
        if self.max_staleness < 0:
            raise ValueError(f"max_staleness must be >= 0, got {self.max_staleness}")

    def judge(self, sample: SampleInfo, trainer_version: int, now_ms: int) -> Verdict:
        if sample.lag(trainer_version) <= self.max_staleness:
            return Verdict.keep()
        return Verdict.drop(STALE_LAG, _lag_detail(
            sample, trainer_version,
            f"max_staleness {self.max_staleness} despite admission control"))

    def admit(self, state: AdmissionState) -> Admission:
        return version_budget(state, self.max_staleness)


class ImportanceWeighted(StalenessPolicy, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Keep stale samples and let the loss correct for them.

    The trainer's truncated importance sampling already reweights every token by
    min(pi_trainer / mu_sampler, C), which is unbiased up to the cap C; that is what decay=1
    relies on. decay < 1 multiplies the whole sample's loss by decay**lag on top: it biases the
    gradient toward fresh samples, trading bias for lower variance when old samples' ratios are
    often truncated (the correction is then incomplete anyway). Samples newer than the trainer get
    weight 1, never more."""

    max_lag: int | None = None
    """Hard cap: drop samples with a larger lag; None keeps every sample."""
    decay: float = 1.0
    """Per-version loss-weight factor in (0, 1]; weight = decay ** max(lag, 0)."""

    def __post_init__(self) -> None:
        if self.max_lag is not None and self.max_lag < 0:
            raise ValueError(f"max_lag must be >= 0 or None, got {self.max_lag}")
        if not 0.0 < self.decay <= 1.0:
            raise ValueError(f"decay must be in (0, 1], got {self.decay}")

    def judge(self, sample: SampleInfo, trainer_version: int, now_ms: int) -> Verdict:
        lag = sample.lag(trainer_version)
        if self.max_lag is not None and lag > self.max_lag:
            return Verdict.drop(STALE_LAG, _lag_detail(sample, trainer_version,
                                                       f"max_lag {self.max_lag}"))
        return Verdict.keep(weight=self.decay ** max(lag, 0))


class TimeWindow(StalenessPolicy, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Drop samples whose generation finished more than `window_s` before `now_ms`, a clock the
    caller passes in and records (replay passes the recorded value, so verdicts reproduce).
    Age is measured against the producer's `finished_at_ms`, so producer clock skew shifts it;
    a sample that finished "in the future" has negative age and is kept."""

    window_s: float
    """Oldest age kept, in seconds."""

    def __post_init__(self) -> None:
        if not self.window_s > 0:
            raise ValueError(f"window_s must be > 0, got {self.window_s}")

    def judge(self, sample: SampleInfo, trainer_version: int, now_ms: int) -> Verdict:
        age_ms = now_ms - sample.finished_at_ms
        if age_ms <= self.window_s * 1000.0:
            return Verdict.keep()
        return Verdict.drop(STALE_TIME, (
            f"sample {sample.sample_id!r}: finished {age_ms} ms before now ({now_ms}), "
            f"window {self.window_s} s"))


class Synchronous(StalenessPolicy, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The on-policy baseline: producers start only the current version's batch, and the trainer
    keeps only samples whose every token came from its current weights (MaxLag 0 with drop,
    plus admission with max_staleness 0)."""

    def judge(self, sample: SampleInfo, trainer_version: int, now_ms: int) -> Verdict:
        if sample.lag(trainer_version) <= 0:
            return Verdict.keep()
        return Verdict.drop(STALE_LAG, _lag_detail(sample, trainer_version,
                                                   "0 (synchronous: on-policy only)"))

    def admit(self, state: AdmissionState) -> Admission:
        return version_budget(state, 0)
