"""A replicated Kafka cluster on loopback (scripts/kafka.sh cluster 3: three KRaft nodes, RF 3,
min.insync.replicas 2, no unclean leader election) and a real run surviving broker failures on
it. Run streams get three copies and the guard refuses one before creating anything; the
cheapest failure scenario (the trajectories leader killed) runs here, all four in `python -m
bench.kafka_cluster` (tests/faults/cluster.py has them, with what each asserts): CI's time
budget holds one run against the cluster."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamrl.log import open_log
from streamrl.log.kafka import KafkaLog
from streamrl.log.kafka.options import UnreplicatedStream
from tests.faults.cluster import Cluster, ClusterUnavailable, leader_killed
from tests.helpers import REPO

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if shutil.which("java") is None:
        pytest.skip("java not found: the three-broker cluster needs Java 17+")
    c = Cluster(tmp_path_factory.mktemp("kafka-cluster"))
    try:
        start_s = c.start()
    except ClusterUnavailable as exc:
        pytest.skip(f"the three-broker Kafka cluster could not start here: {exc}")
    print(f"cluster of 3 started in {start_s:.1f}s")
    yield c
    c.stop()


@pytest.fixture(autouse=True)
def _children_find_the_test_hooks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(REPO))


async def test_run_streams_get_three_copies_two_in_sync(cluster: Cluster) -> None:
    stream = f"repl-{uuid.uuid4().hex[:8]}.trajectories"
    async with open_log(cluster.url) as log:
        assert isinstance(log, KafkaLog) and log._admin is not None
        await log.ensure_stream(stream, 2)
        assert await log._admin.num_brokers() == 3
        assert await log._admin.replication_of(stream) == (3, 2)
        # The internal topics too: group positions and transaction state survive a broker.
        await log.commit("g", {(stream, 0): 0})
        internal = {t["topic"]: t["partitions"] for t in await log._admin._metadata(None)
                    if t["is_internal"]}
        assert {len(p["replicas"]) for p in internal["__consumer_offsets"]} == {3}


async def test_one_copy_on_the_cluster_is_refused_before_anything_is_created(
        cluster: Cluster) -> None:
    stream = f"repl-{uuid.uuid4().hex[:8]}.events"
    async with open_log(cluster.url + "?replication_factor=1") as log:
        with pytest.raises(UnreplicatedStream, match="replication_factor=1 on a cluster of 3"):
            await log.ensure_stream(stream, 1)
        assert stream not in await log.list_streams("repl-")
    async with open_log(cluster.url + "?replication_factor=1&durable=false") as log:
        await log.ensure_stream(stream, 1)  # the user accepted the risk
    async with open_log(cluster.url) as log:  # and every durable user of it is told
        with pytest.raises(UnreplicatedStream, match=f"existing stream '{stream}'"):
            await log.ensure_stream(stream, 1)


async def test_the_trajectories_leader_killed_mid_run_loses_nothing(
        cluster: Cluster, tmp_path: Path) -> None:
    measured = await leader_killed(cluster, tmp_path, max_versions=3)
    print(f"leader killed: {measured}")
    assert measured["leader_failover_s"] < 60

