"""The staleness policy contract: what the trainer does with each arriving sample, and whether a
producer may start new generations now.

    policy = build_policy(StalenessConfig(policy="streamrl.staleness:MaxLag",
                                          options={"max_lag": 2}))
    verdicts = policy.judge_group(group, trainer_version, now_ms)    # trainer side
    admission = policy.admit(state)                                  # producer side

A policy is a frozen msgspec struct whose fields are its options, so the object a recipe builds is
exactly its configuration, and a decision is a pure function of (policy, inputs). Replay re-runs
the decisions from the log, so a policy must not read clocks, randomness or mutable state: the
wall clock arrives as `now_ms` (the time window), and the caller records the value it passed.

Every non-keep verdict and every refused admission carries a stable `reason_code` and a human
`detail`; the caller turns them into `schemas.Rejected(subject, reason_code, detail)` events, so
nothing is dropped or throttled silently.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Sequence
from typing import Any, Literal

import msgspec

from streamrl.hooks import resolve

# Stable reason codes: dashboards and `streamrl staleness RUN` group by them, so never rename one.
STALE_LAG = "stale_lag"  # the oldest token's version is too far behind the trainer
STALE_TIME = "stale_time"  # generation finished too long ago
GROUP_REJECTED = "group_rejected"  # a sibling of the GRPO group was rejected
THROTTLED = "throttled"  # a producer may not start more samples until the trainer advances

UNLIMITED = sys.maxsize  # `Admission.capacity` of a policy that never throttles


class StalenessError(ValueError):
    """A staleness config that cannot be built (unknown policy, unknown or bad option)."""


class SampleInfo(msgspec.Struct, kw_only=True, frozen=True):
    """What a policy may see of one arrived sample: versions, times and its log position."""

    sample_id: str
    group_id: str
    prompt_id: str
    policy_version: int  # the producer's weights when generation started
    # Over the response tokens (`response_versions`); weights may change mid-sample, so
    # policy_version <= min_version <= max_version. Lag is measured from min_version.
    min_version: int
    max_version: int
    finished_at_ms: int  # when generation finished (producer clock)
    arrived_at_ms: int  # the log's timestamp of the record
    position: tuple[str, int, int]  # (stream, partition, offset)

    def __post_init__(self) -> None:
        if not 0 <= self.policy_version <= self.min_version <= self.max_version:
            raise ValueError(
                f"sample {self.sample_id!r}: need 0 <= policy_version <= min_version <= "
                f"max_version, got {self.policy_version}, {self.min_version}, {self.max_version}")

    def lag(self, trainer_version: int) -> int:
        """Versions between the trainer and the oldest weights that sampled any token; negative
        when the sample is newer than the trainer (see `StalenessPolicy`)."""
        return trainer_version - self.min_version


class Verdict(msgspec.Struct, kw_only=True, frozen=True):
    """The trainer-side decision for one sample. `requeue` returns the prompt for regeneration
    (the caller requeues a group's prompt once, not once per sample)."""

    action: Literal["keep", "drop", "requeue"]
    weight: float = 1.0  # multiplies the sample's loss; meaningful only for "keep"
    reason_code: str = ""
    detail: str = ""

    @classmethod
    def keep(cls, weight: float = 1.0) -> Verdict:
        return cls(action="keep", weight=weight)

    @classmethod
    def drop(cls, code: str, detail: str) -> Verdict:
        return cls(action="drop", weight=0.0, reason_code=code, detail=detail)

    @classmethod
    def requeue(cls, code: str, detail: str) -> Verdict:
        return cls(action="requeue", weight=0.0, reason_code=code, detail=detail)


class AdmissionState(msgspec.Struct, kw_only=True, frozen=True):
    """What one producer knows when it asks whether it may start new generations."""

    trainer_version: int  # the latest version announced on the weights stream
    # Samples this producer has started so far, in flight and finished. Leave out samples that
    # will never be trained (a sample filter rejected their group, or the trainer's Rejected
    # event names them): the trainer still needs a full batch per version, and counting them
    # would throttle the producer forever (AReaL counts accepted + running the same way; the
    # producer's count: producers/budget.py).
    num_started: int
    num_in_flight: int
    batch_size: int  # samples the trainer consumes per version
    num_producers: int
    now_ms: int
    # This producer's index among num_producers (e.g. its place in the sorted ids of the
    # ProducerJoined events), if known: it lets per-producer shares split a budget exactly;
    # None rounds every share up (see `version_budget`).
    producer_rank: int | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.num_producers < 1:
            raise ValueError(f"batch_size and num_producers must be >= 1, got "
                             f"{self.batch_size} and {self.num_producers}")
        if self.producer_rank is not None and not 0 <= self.producer_rank < self.num_producers:
            raise ValueError(f"producer_rank must be in [0, num_producers={self.num_producers}),"
                             f" got {self.producer_rank}")
        if not 0 <= self.num_in_flight <= self.num_started:
            raise ValueError(f"need 0 <= num_in_flight <= num_started, got "
                             f"{self.num_in_flight} and {self.num_started}")


class Admission(msgspec.Struct, kw_only=True, frozen=True):
    """The producer-side decision: may it start samples now, and how many."""

    allowed: bool
    capacity: int  # how many more samples it may start now; UNLIMITED when nothing throttles
    reason_code: str = ""
    detail: str = ""

    @classmethod
    def unlimited(cls) -> Admission:
        return cls(allowed=True, capacity=UNLIMITED)


class StalenessPolicy(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Base of every policy; subclasses add their options as fields and override `judge`
    (and `admit` if they throttle producers).

    Lag may be negative (a sample newer than the trainer): after a trainer restarts from a
    checkpoint older than the last version it announced, producers still hold the newer weights.
    Every built-in policy keeps such samples; the loss's importance correction covers the gap.
    """

    whole_group: bool = True
    """If any sample of a group is dropped or requeued, do the same to the whole group. GRPO
    normalizes advantages within a group; a partial group shifts its mean and std, so the kept
    siblings would train on biased advantages. Turn off only for advantage estimators that do not
    look at siblings."""

    def judge(self, sample: SampleInfo, trainer_version: int, now_ms: int) -> Verdict:
        raise NotImplementedError(f"{type(self).__name__} must implement judge()")

    def admit(self, state: AdmissionState) -> Admission:
        return Admission.unlimited()

    def judge_group(self, samples: Sequence[SampleInfo], trainer_version: int,
                    now_ms: int) -> tuple[Verdict, ...]:
        """Judge the samples of one group, in order; with `whole_group`, one rejected sample
        rejects them all. "requeue" beats "drop": a sibling that asked for its prompt to be
        regenerated should not lose the prompt because another one was merely dropped."""
        groups = {s.group_id for s in samples}
        if len(groups) > 1:
            raise ValueError(f"judge_group got samples of several groups: {sorted(groups)}")
        verdicts = tuple(self.judge(s, trainer_version, now_ms) for s in samples)
        rejected = [(s, v) for s, v in zip(samples, verdicts, strict=True) if v.action != "keep"]
        if not self.whole_group or not rejected:
            return verdicts
        cause, worst = next(((s, v) for s, v in rejected if v.action == "requeue"), rejected[0])
        done = "requeued" if worst.action == "requeue" else "dropped"
        detail = (f"group {cause.group_id!r}: sibling {cause.sample_id!r} was {done} "
                  f"({worst.reason_code}: {worst.detail})")
        sibling = Verdict(action=worst.action, weight=0.0, reason_code=GROUP_REJECTED,
                          detail=detail)
        return tuple(v if v.action == worst.action else sibling for v in verdicts)


class StalenessConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Which staleness policy a run uses, and its options."""

    policy: str = "streamrl.staleness:AdmissionControl"
    """Import path of a `StalenessPolicy` subclass, e.g. "streamrl.staleness:MaxLag"."""
    options: dict[str, Any] = {}
    """The policy's own fields, e.g. {"max_lag": 2}; `whole_group` is accepted by every policy.
    Unknown names are refused at load, naming the option and listing the valid ones."""


def build_policy(config: StalenessConfig) -> StalenessPolicy:
    """Resolve `config.policy` and build it from `config.options`; raises StalenessError at load
    with a message that names the bad policy path or option."""
    what = "staleness policy"
    try:
        target = resolve(config.policy, StalenessPolicy, what=what)
    except ValueError as error:
        raise StalenessError(str(error)) from None
    if not isinstance(target, type):  # a prebuilt instance: its options are already fixed
        if config.options:
            raise StalenessError(f"{what} {config.policy!r} is an instance; it takes no options")
        return target
    fields = {f.encode_name: f for f in msgspec.structs.fields(target)}
    own_first = sorted(fields.values(), key=lambda f: f.name == "whole_group")
    valid = ", ".join(f"{f.encode_name} ({'required' if f.required else 'optional'})"
                      for f in own_first)
    for key in config.options:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise StalenessError(f"{what} {config.policy!r} has no option {key!r}{hint} "
                                 f"Valid options: {valid}")
    missing = [n for n, f in fields.items() if f.required and n not in config.options]
    if missing:
        raise StalenessError(f"{what} {config.policy!r} needs option(s) {missing}. "
                             f"Valid options: {valid}")
    try:
        return msgspec.convert(config.options, target)
    except msgspec.ValidationError as error:
        raise StalenessError(f"{what} {config.policy!r}: bad option: {error}") from None
