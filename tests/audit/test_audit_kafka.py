"""`streamrl audit` on a real run over the real Kafka broker: offsets there have gaps
(transaction markers), so the stream check is semantic, and a clean run must still pass."""

from __future__ import annotations

import uuid
from pathlib import Path

from tests.audit.planting import audit, start_real_run, streamrl


def test_audit_passes_on_a_real_kafka_run(kafka_url: str, tmp_path: Path) -> None:
    run_id = f"audit-{uuid.uuid4().hex[:8]}"
    start_real_run(kafka_url, tmp_path / "runs", run_id)
    report = audit(kafka_url, run_id)
    assert report.ok, [(v.code, v.where, v.message) for v in report.violations]
    assert report.check("trained_once").num_checked == 3 * 8
    assert any("Kafka" in note for note in report.check("streams").notes)
    out = streamrl("audit", run_id, "--log", kafka_url)
    assert out.returncode == 0, out.stdout + out.stderr
