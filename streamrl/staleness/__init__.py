"""Staleness policies: which arriving samples the trainer keeps (and with what loss weight), and
when producers may start new generations. See `base.py` for the contract, `policies.py` for the
built-in rules."""

from streamrl.staleness.base import (
    GROUP_REJECTED,
    STALE_LAG,
    STALE_TIME,
    THROTTLED,
    UNLIMITED,
    Admission,
    AdmissionState,
    SampleInfo,
    StalenessConfig,
    StalenessError,
    StalenessPolicy,
    Verdict,
    build_policy,
)
from streamrl.staleness.policies import (
    AdmissionControl,
    ImportanceWeighted,
    MaxLag,
    Synchronous,
    TimeWindow,
    version_budget,
)

__all__ = [
    "GROUP_REJECTED",
    "STALE_LAG",
    "STALE_TIME",
    "THROTTLED",
    "UNLIMITED",
    "Admission",
    "AdmissionControl",
    "AdmissionState",
    "ImportanceWeighted",
    "MaxLag",
    "SampleInfo",
    "StalenessConfig",
    "StalenessError",
    "StalenessPolicy",
    "Synchronous",
    "TimeWindow",
    "Verdict",
    "build_policy",
    "version_budget",
]
