"""One real tiny run (tests/run/tiny.toml, file log) shared by the audit and staleness tests:
each test plants its inconsistency in a private copy of its log."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.audit.planting import RealRun, start_real_run


@pytest.fixture(scope="session")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> RealRun:
    root = tmp_path_factory.mktemp("audit-run")
    run = RealRun(run_id="audited", log_dir=root / "log", runs_dir=root / "runs")
    start_real_run(str(run.log_dir), run.runs_dir, run.run_id)
    return run


@pytest.fixture
def log_copy(real_run: RealRun, tmp_path: Path) -> Path:
    """A private copy of the real run's log directory."""
    from tests.audit.planting import copy_log
    return copy_log(real_run, tmp_path / "log")
