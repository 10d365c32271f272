"""Reports computed from a run's log: `staleness_summary` (the `streamrl staleness` command),
with its plot and printed table in `plots`."""

from streamrl.report.staleness import Distribution, StalenessSummary, staleness_summary

__all__ = ["Distribution", "StalenessSummary", "staleness_summary"]
