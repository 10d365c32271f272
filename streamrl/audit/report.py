"""What an audit finds: one `CheckResult` per check, each with its `Violation`s, and a summary of
the dead-letter stream.

Violation codes are stable strings (tests, dashboards and the fault-tolerance suite match on
them); never rename one, only add. `where` names the place a user can look at: a log position
(`stream:partition:offset`), a weight version (`version 7`) or a sample id.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

# Every code an audit can report, by the check that reports it.
CODES: dict[str, tuple[str, ...]] = {
    "trained_once": ("sample_trained_twice",),
    "positions": ("position_mismatch", "position_missing"),
    "staleness": ("stale_sample_trained", "sample_weight_mismatch", "staleness_misrecorded"),
    "version_chain": ("version_gap", "version_announced_twice", "parent_mismatch",
                      "batch_missing", "batch_duplicate", "train_step_missing",
                      "train_step_duplicate", "announce_batch_mismatch"),
    "digests": ("digest_mismatch", "stored_weights_unreadable"),
    "reported_versions": ("unannounced_version",),
    "streams": ("offset_gap", "duplicate_event_id", "duplicate_sample", "duplicate_group",
                "duplicate_batch_id", "undecodable_record"),
    "dead_letters": ("dead_lettered_sample_trained",),
}


class Violation(msgspec.Struct, frozen=True, kw_only=True):
    code: str  # stable, one of CODES[check]
    message: str  # one readable sentence saying what is wrong
    where: str  # "run.events:0:17", "version 3", "sample prompt-0-5-s1", ...


class CheckResult(msgspec.Struct, kw_only=True):
    name: str  # a key of CODES
    title: str  # what the check asserts, for the report line
    num_checked: int  # how many items it looked at (samples, versions, records, ...)
    violations: list[Violation] = msgspec.field(default_factory=list)
    notes: list[str] = msgspec.field(default_factory=list)  # counts worth showing, not failures

    @property
    def ok(self) -> bool:
        return not self.violations

    def fail(self, code: str, message: str, where: str) -> None:
        assert code in CODES[self.name], f"{code!r} is not a code of check {self.name!r}"
        self.violations.append(Violation(code=code, message=message, where=where))


class DeadLetterSummary(msgspec.Struct, frozen=True, kw_only=True):
    reason_code: str
    component: str
    count: int


class AuditReport(msgspec.Struct, kw_only=True):
    run_id: str
    log_url: str
    checks: list[CheckResult]
    dead_letters: list[DeadLetterSummary]
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def violations(self) -> list[Violation]:
        return [v for c in self.checks for v in c.violations]

    def codes(self) -> set[str]:
        return {v.code for v in self.violations}

    def check(self, name: str) -> CheckResult:
        return next(c for c in self.checks if c.name == name)

    def to_builtins(self) -> dict[str, object]:
        """JSON-ready: the report plus `ok` and the violation count."""
        out: dict[str, object] = msgspec.to_builtins(self)
        out["ok"] = self.ok
        out["num_violations"] = len(self.violations)
        for check, result in zip(out["checks"], self.checks, strict=True):  # type: ignore[arg-type]
            check["ok"] = result.ok
        return out


def where_position(stream: str, partition: int, offset: int) -> str:
    return f"{stream}:{partition}:{offset}"


def first(items: Iterable[str], n: int = 4) -> str:
    """A short list for messages: the first `n` items and how many more."""
    items = list(items)
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more
