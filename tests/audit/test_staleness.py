"""`streamrl staleness RUN` on a real run: the JSON summary agrees with what this test computes
on its own from the recorded trajectories and events, and the plot is written."""

from __future__ import annotations

import json
from collections import Counter, defaultdict

import numpy as np
import pyarrow as pa

from streamrl import aio
from streamrl.log import open_log
from streamrl.schemas import BatchFormed, Rejected, decode_event, decode_trajectories
from streamrl.streams import RunStreams
from tests.audit.planting import RealRun, streamrl


def recorded(run: RealRun) -> tuple[pa.Table, list[BatchFormed], list[Rejected]]:
    streams = RunStreams(run.run_id)

    async def go() -> tuple[pa.Table, list]:
        async with open_log(str(run.log_dir)) as log:
            batches = [decode_trajectories(r.value)
                       for r in await log.read_all(streams.trajectories)]
            events = [decode_event(r.value, "events") for r in await log.read_all(streams.events)]
        return pa.Table.from_batches(batches), events
    table, events = aio.run(go())
    return (table, [e for e in events if isinstance(e, BatchFormed)],
            [e for e in events if isinstance(e, Rejected)])


def test_staleness_summary_agrees_with_the_trajectories(real_run: RealRun) -> None:
    out = streamrl("staleness", real_run.run_id, "--log", str(real_run.log_dir))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "trained samples" in out.stdout
    run_dir = real_run.runs_dir / real_run.run_id  # the default --out
    summary = json.loads((run_dir / "staleness.json").read_text())
    assert (run_dir / "staleness.png").stat().st_size > 10_000

    table, batches, rejected = recorded(real_run)
    rows = {sid: i for i, sid in enumerate(table["sample_id"].to_pylist())}
    versions = table["response_versions"].to_pylist()
    masks = table["loss_mask"].to_pylist()
    sample_lags, token_lags, batch_max = [], [], []
    for batch in batches:
        lags = []
        for sid in batch.sample_ids:
            per_token = versions[rows[sid]]
            lags.append(batch.policy_version - min(per_token))
            token_lags += [batch.policy_version - v
                           for v, m in zip(per_token, masks[rows[sid]], strict=True) if m]
        sample_lags += lags
        batch_max.append(max(lags))

    assert summary["num_trained"] == len(sample_lags) == 24
    assert summary["num_generated"] == table.num_rows
    subjects = {r.subject for r in rejected}
    trained = {sid for b in batches for sid in b.sample_ids}
    assert summary["num_unused"] == sum(
        1 for sid, gid in zip(table["sample_id"].to_pylist(), table["group_id"].to_pylist(),
                              strict=True)
        if sid not in trained and sid not in subjects and gid not in subjects)
    for key, lags in (("per_sample", sample_lags), ("per_token", token_lags)):
        dist = summary[key]
        assert dist["count"] == len(lags)
        assert dist["histogram"] == {str(k): n for k, n in sorted(Counter(lags).items())}
        assert np.isclose(dist["mean"], np.mean(lags))
        assert np.isclose(dist["p99"], np.percentile(lags, 99))
        assert dist["max"] == max(lags)
    # tiny.toml keeps lag <= 1, and its stale groups were rejected with a reason
    assert summary["per_sample"]["max"] <= 1
    assert summary["rejected_by_reason"] == dict(Counter(r.reason_code for r in rejected))
    assert summary["rejected_by_reason"].get("stale_lag", 0) > 0
    per_producer: dict[str, int] = defaultdict(int)
    for producer in table["producer_id"].to_pylist():
        per_producer[producer] += 1
    assert summary["throughput"]["total"] == per_producer
    assert {p: sum(c) for p, c in summary["throughput"]["rows"].items()} == per_producer
    assert [b["max_lag"] for b in summary["batches"]] == batch_max
    # The train/rollout mismatch the trainer measured, one entry per version it trained.
    assert [m["version"] for m in summary["mismatch"]] == [b.policy_version + 1 for b in batches]
    assert all(m["abs_logprob"] >= 0 and m["kl"] >= 0 for m in summary["mismatch"])
    assert "train/rollout mismatch over" in out.stdout
    assert [b["policy_version"] for b in summary["batches"]] == [0, 1, 2]


def test_staleness_of_an_unknown_run_exits_2(real_run: RealRun) -> None:
    out = streamrl("staleness", "no-such-run", "--log", str(real_run.log_dir))
    assert out.returncode == 2 and "no-such-run" in out.stdout + out.stderr
