"""`audit_run(log, run_id) -> AuditReport`: walk a run's lineage in the log and check the
invariants the design promises (exactly-once training, the staleness policy, an intact version
chain with digests that match stored tensors, no gap or duplicate in any stream).

    async with open_log(url) as log:
        report = await audit_run(log, "my-run")
    if not report.ok:
        for v in report.violations:
            print(v.code, v.where, v.message)

Each violation has a stable `code` (see `report.CODES`), a readable message and where to look.
An unknown run raises `AuditInputError`. The CLI is `streamrl audit RUN`; docs/audit.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from streamrl.audit.checks_streams import check_streams, dead_letter_summary
from streamrl.audit.checks_training import (
    check_dead_letters,
    check_positions,
    check_staleness,
    check_trained_once,
)
from streamrl.audit.checks_versions import (
    check_digests,
    check_reported_versions,
    check_version_chain,
)
from streamrl.audit.lineage import AuditInputError, RunRecords, SampleRow, load_run
from streamrl.audit.report import CODES, AuditReport, CheckResult, Violation
from streamrl.log import Log

Check = Callable[[RunRecords], CheckResult]
# In report order; each returns one CheckResult named after a key of CODES.
CHECKS: tuple[Check, ...] = (
    check_trained_once, check_positions, check_staleness, check_version_chain, check_digests,
    check_reported_versions, check_streams, check_dead_letters,
)


async def audit_run(log: Log, run_id: str) -> AuditReport:
    """Audit `run_id` in a started `log`; raises AuditInputError for an unknown run."""
    t0 = time.perf_counter()
    run = await load_run(log, run_id)
    return audit_records(run, duration_from=t0)


def audit_records(run: RunRecords, *, duration_from: float | None = None) -> AuditReport:
    """Run every check on records already read (the staleness report reuses a `RunRecords`)."""
    t0 = time.perf_counter() if duration_from is None else duration_from
    checks = [check(run) for check in CHECKS]
    return AuditReport(run_id=run.run_id, log_url=run.log_url, checks=checks,
                       dead_letters=dead_letter_summary(run),
                       duration_s=time.perf_counter() - t0)


__all__ = ["CHECKS", "CODES", "AuditInputError", "AuditReport", "CheckResult", "RunRecords",
           "SampleRow", "Violation", "audit_records", "audit_run", "load_run"]
