"""A run is a folder you can archive: a real tiny run on Kafka is exported, its history deleted
(first records, then the topics and the run's folder), imported to a file log elsewhere, and
replays 4/4 bit-exactly, audits clean and re-trains as a counterfactual there; its samples read
back from Parquet alone."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

from streamrl.streams import RunStreams
from tests.helpers import streamrl
from tests.replay.conftest import make_run
from tests.replay.replay_util import MAX_VERSIONS

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


async def _admin(kafka_url: str, call: Callable[[AIOKafkaAdminClient], Awaitable]) -> None:
    client = AIOKafkaAdminClient(bootstrap_servers=kafka_url.removeprefix("kafka://"))
    await client.start()
    try:
        await call(client)
    finally:
        await client.close()


def test_a_kafka_run_exported_deleted_and_imported_replays_and_audits(
        recipe: Path, tmp_path: Path, kafka_url: str) -> None:
    made = make_run(recipe, tmp_path / "made", kafka_url)
    run_id, streams, folder = made.run_id, RunStreams(made.run_id), tmp_path / "export"

    out = streamrl("export", run_id, str(folder), "--log", kafka_url)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "exported run" in out.stdout

    samples = pq.read_table(folder / "trajectories.parquet")  # pyarrow alone, no streamrl
    assert samples.num_rows > 0 and samples.num_rows % 4 == 0
    assert {"sample_id", "reward", "response_tokens", "trained_version"} <= set(
        samples.column_names)
    trained = [v for v in samples["trained_version"].to_pylist() if v is not None]
    assert len(trained) == MAX_VERSIONS * 8 and set(trained) == set(range(1, MAX_VERSIONS + 1))

    # History deleted on Kafka: replay names the first missing offset instead of a trace.
    asyncio.run(_admin(kafka_url, lambda a: a.delete_records(
        {TopicPartition(streams.trajectories, 0): RecordsToDelete(2)})))
    lost = streamrl("replay", run_id, "--log", kafka_url)
    assert lost.returncode == 2, lost.stdout[-2000:] + lost.stderr[-2000:]
    assert f"{streams.trajectories}[0] no longer holds offsets 0..1" in lost.stderr
    assert "Traceback" not in lost.stderr

    # The run is gone from the broker and from disk; only the folder is left.
    asyncio.run(_admin(kafka_url, lambda a: a.delete_topics(list(streams.all().values()))))
    shutil.rmtree(made.runs_dir / run_id)

    log = str(tmp_path / "elsewhere" / "log")
    runs = tmp_path / "elsewhere" / "runs"
    imported = streamrl("import", str(folder), "--log", log, "--runs-dir", str(runs))
    assert imported.returncode == 0, imported.stdout[-3000:] + imported.stderr[-3000:]

    replayed = streamrl("replay", run_id, "--log", log)
    assert replayed.returncode == 0, replayed.stdout[-3000:] + replayed.stderr[-3000:]
    assert f"reproduced {MAX_VERSIONS}/{MAX_VERSIONS} versions bit-exactly" in replayed.stdout

    audited = streamrl("audit", run_id, "--log", log)
    assert audited.returncode == 0, audited.stdout[-4000:] + audited.stderr[-2000:]

    # A counterfactual of the imported run: re-trained under its own policy, same versions.
    cf = streamrl("replay", run_id, "--log", log, "--as", f"{run_id}-cf",
                  "--staleness", "MaxLag,max_lag=1,on_stale=requeue")
    assert cf.returncode == 0, cf.stdout[-3000:] + cf.stderr[-3000:]
    assert streamrl("audit", f"{run_id}-cf", "--log", log).returncode == 0

    again = streamrl("import", str(folder), "--log", log, "--runs-dir", str(runs))
    assert again.returncode == 2 and "already exists" in again.stdout
