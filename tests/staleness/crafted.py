"""Crafted sample streams for the staleness tests, and a custom policy reachable by import path."""

from __future__ import annotations

from collections.abc import Iterable

from streamrl.staleness import Admission, SampleInfo, StalenessPolicy, Verdict


def info(sample_id: str, version: int, *, min_version: int | None = None,
         max_version: int | None = None, group_id: str = "g0", finished_at_ms: int = 0,
         arrived_at_ms: int = 0, offset: int = 0) -> SampleInfo:
    """A sample started at `version`; every token from it unless min/max say otherwise."""
    low = version if min_version is None else min_version
    return SampleInfo(
        sample_id=sample_id, group_id=group_id, prompt_id=f"p-{group_id}", policy_version=version,
        min_version=low, max_version=low if max_version is None else max_version,
        finished_at_ms=finished_at_ms, arrived_at_ms=arrived_at_ms,
        position=("run.trajectories", 0, offset))


def group(group_id: str, versions: Iterable[int], **kwargs) -> list[SampleInfo]:
    return [info(f"{group_id}-s{i}", v, group_id=group_id, **kwargs)
            for i, v in enumerate(versions)]


def assert_explained(verdicts: Iterable[Verdict | Admission]) -> None:
    """Every rejection must become a Rejected event with a reason a human can act on."""
    for v in verdicts:
        rejected = v.action != "keep" if isinstance(v, Verdict) else not v.allowed
        if rejected:
            assert v.reason_code, v
            assert v.detail, v
        else:
            assert not v.reason_code, v


class DropOddVersions(StalenessPolicy, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A user-defined policy, built by import path in the tests: "tests.staleness.crafted:...".
    Rejects odd versions: requeues those >= requeue_from, drops the rest."""

    requeue_from: int | None = None

    def judge(self, sample: SampleInfo, trainer_version: int, now_ms: int) -> Verdict:
        version = sample.min_version
        if version % 2 == 0:
            return Verdict.keep()
        if self.requeue_from is not None and version >= self.requeue_from:
            return Verdict.requeue("odd", f"{sample.sample_id}: odd version {version}")
        return Verdict.drop("odd", f"{sample.sample_id}: odd version {version}")
