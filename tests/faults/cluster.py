"""A private replicated Kafka cluster (scripts/kafka.sh cluster 3 on free ports, its own data dir)
and the four failure scenarios of a real run against it, shared by
tests/faults/test_kafka_cluster.py (the cheapest ones, in CI) and bench/kafka_cluster.py (all
four, with their recovery times).

Each scenario runs the tiny recipe under the local supervisor (real trainer and producer
processes), injects its fault with real signals to the brokers' JVMs, then requires
`streamrl audit` to pass and every trajectory the trainer's committed position covers to be
trained exactly once (`chaos.assert_exactly_once`); it returns what it measured, in seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from streamrl.hooks.train import TrainStepInput
from streamrl.launch.local import LocalLauncher
from streamrl.log import Log, open_log
from streamrl.log.kafka import KafkaLog
from streamrl.recipe.config import load_config
from streamrl.recipe.context import RunContext
from streamrl.run.driver import start_run, supervise
from streamrl.schemas import TrainStep, decode_event
from tests.faults.broker import kafka_sh
from tests.faults.chaos import assert_exactly_once
from tests.helpers import TINY, streamrl

TXN_COORDINATOR = 1  # FindCoordinator key type of a transactional id
KILL_COORDINATOR_ENV = "STREAMRL_FAULT_KILL_PID_AT"  # "VERSION:PID_FILE:MARKER_FILE"
Measured = dict[str, float]
Chaos = Callable[[Log, RunContext], Awaitable[None]]


class ClusterUnavailable(RuntimeError):
    """The cluster could not start here (no Java, no free ports, a JVM that died)."""


def free_port_block(size: int, controller_offset: int = 100) -> int:
    """A port p with p .. p+size-1 and the controllers' p+offset .. free right now."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        wanted = [port + i for i in range(size)] + [port + controller_offset + i
                                                   for i in range(size)]
        if port + controller_offset + size < 65000 and all(_free(p) for p in wanted):
            return port
    raise ClusterUnavailable(f"no block of {size} free ports")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class Cluster:
    """`start()`, `kill(node)` (SIGKILL), `stop_node(node)` (controlled shutdown),
    `start_node(node)` (same data dir, as an operator's restart), `stop()`. Nodes are 1..size
    and a node's Kafka broker id is its number."""

    def __init__(self, data: Path, size: int = 3) -> None:
        self.data, self.size = data, size
        self.port = free_port_block(size)
        self.env = {**os.environ, "STREAMRL_KAFKA_CLUSTER_DATA": str(data),
                    "STREAMRL_KAFKA_CLUSTER_PORT": str(self.port),
                    "STREAMRL_KAFKA_CLUSTER_HEAP": "512m", "STREAMRL_KAFKA_STOP_TIMEOUT": "20",
                    "STREAMRL_KAFKA_START_TIMEOUT": "180"}
        self.bootstrap = ",".join(f"127.0.0.1:{self.port + i}" for i in range(size))
        self.url = f"kafka://{self.bootstrap}"

    def script(self, *args: str) -> str:
        return kafka_sh(self.env, *args, timeout_s=300)

    def start(self) -> float:
        """Start every node; the seconds it took (format included on first start)."""
        t0 = time.monotonic()
        try:
            self.script("cluster", str(self.size))
        except RuntimeError as exc:
            with contextlib.suppress(Exception):
                self.stop()
            raise ClusterUnavailable(str(exc)) from None
        return time.monotonic() - t0

    def pid(self, node: int) -> int | None:
        try:
            return int((self.data / f"node{node}" / "broker.pid").read_text())
        except (OSError, ValueError):
            return None

    def kill(self, node: int) -> None:
        pid = self.pid(node)
        assert pid is not None, f"node {node} is not running"
        os.kill(pid, signal.SIGKILL)
        while Path(f"/proc/{pid}").exists() and "Z" not in _state(pid):
            time.sleep(0.05)

    def start_node(self, node: int) -> float:
        t0 = time.monotonic()
        self.script("cluster-node-start", str(node))
        return time.monotonic() - t0

    def stop_node(self, node: int) -> float:
        t0 = time.monotonic()
        self.script("cluster-node-stop", str(node))
        return time.monotonic() - t0

    def stop(self) -> None:
        for node in range(1, self.size + 1):
            if (pid := self.pid(node)) is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
        self.script("cluster-stop")

    def running(self) -> list[int]:
        return [n for n in range(1, self.size + 1)
                if (pid := self.pid(n)) is not None and Path(f"/proc/{pid}").exists()
                and "Z" not in _state(pid)]

    async def heal(self, timeout_s: float = 240.0) -> float:
        """Start the nodes that are down and wait until every partition (internal topics
        included) has all its replicas in sync again; the seconds that took."""
        t0 = time.monotonic()
        for node in set(range(1, self.size + 1)) - set(self.running()):
            await asyncio.to_thread(self.start_node, node)
        async with open_log(self.url) as log:
            assert isinstance(log, KafkaLog) and log._admin is not None
            while True:
                topics = await log._admin._metadata(None)
                lagging = [(t["topic"], p["partition"]) for t in topics for p in t["partitions"]
                           if sorted(p["isr"]) != sorted(p["replicas"])]
                if not lagging:
                    return time.monotonic() - t0
                if time.monotonic() - t0 > timeout_s:
                    raise AssertionError(f"not in sync after {timeout_s:.0f}s: {lagging[:5]}")
                await asyncio.sleep(0.25)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return "Z"


# -- the run every scenario disturbs -------------------------------------------------------------
def recipe(tmp_path: Path, max_versions: int, step_hooks: str | None = None) -> Path:
    text = TINY.read_text().replace("max_versions = 3", f"max_versions = {max_versions}")
    if step_hooks is not None:
        text = text.replace('step_hooks = ["tests.run.tiny_task:count_samples"]',
                            f'step_hooks = ["{step_hooks}"]')
    path = tmp_path / "recipe.toml"
    path.write_text(text)
    return path


async def supervised_run(cluster: Cluster, tmp_path: Path, recipe_path: Path,
                         chaos: Chaos) -> Measured:
    """Run `recipe_path` on the cluster while `chaos` disturbs it, then audit it and check
    exactly-once training. Children find the test hooks through PYTHONPATH (set by callers)."""
    config = load_config(recipe_path)
    run_id = f"cluster-{uuid.uuid4().hex[:8]}"
    t0 = time.monotonic()
    async with open_log(cluster.url, writer_id=f"{run_id}-driver") as log:
        ctx, v0 = await start_run(config, log, run_id, tmp_path / "runs", recipe=str(recipe_path))
        launcher = LocalLauncher(cluster.url, run_id)
        with v0:
            run = asyncio.create_task(supervise(ctx, cluster.url, log, launcher))
            try:
                await chaos(log, ctx)
                await asyncio.wait_for(run, 600)
            finally:
                run.cancel()
        run_s = time.monotonic() - t0
        await assert_exactly_once(log, ctx)
    # And as a user would check it: the CLI, given the three brokers' URL.
    audit = await asyncio.to_thread(streamrl, "audit", run_id, "--log", cluster.url)
    assert audit.returncode == 0, f"streamrl audit:\n{audit.stdout[-2000:]}{audit.stderr[-2000:]}"
    return {"run_s": run_s, "restarts": float(sum(launcher.restarts.values()))}


async def train_step(log: Log, ctx: RunContext, version: int | None = None) -> float:
    """Wait for the TrainStep of `version` (any when None); the monotonic time it was seen."""
    async for record in log.follow(ctx.streams.events, 0, poll_s=0.1):
        event = decode_event(record.value, "events")
        if isinstance(event, TrainStep) and version in (None, event.version):
            return time.monotonic()
    raise AssertionError("events stream ended")


async def leader_of(cluster: Cluster, stream: str) -> int:
    async with open_log(cluster.url) as log:
        assert isinstance(log, KafkaLog) and log._admin is not None
        (info,) = await log._admin._metadata([stream])
        return info["partitions"][0]["leader"]


# -- the four scenarios --------------------------------------------------------------------------
async def leader_killed(cluster: Cluster, tmp_path: Path, max_versions: int = 5) -> Measured:
    """kill -9 the leader of trajectories[0] once the trainer made its first version; measured:
    until another broker leads it, and until the next trajectory record is acknowledged."""
    measured: Measured = {}

    async def chaos(log: Log, ctx: RunContext) -> None:
        await train_step(log, ctx)
        stream = ctx.streams.trajectories
        leader = await leader_of(cluster, stream)
        end = await log.end_offset(stream, 0)
        t_kill = time.monotonic()
        cluster.kill(leader)
        new_leader = leader
        while new_leader in (leader, -1):
            await asyncio.sleep(0.1)
            new_leader = await leader_of(cluster, stream)
        measured["leader_failover_s"] = time.monotonic() - t_kill
        async for _ in log.follow(stream, 0, end, poll_s=0.1):
            break
        measured["next_trajectory_s"] = time.monotonic() - t_kill
        measured["heal_s"] = await cluster.heal()

    measured |= await supervised_run(cluster, tmp_path, recipe(tmp_path, max_versions), chaos)
    return measured


def kill_pid_once(step: TrainStepInput) -> dict[str, float]:
    """A trainer step hook: at version VERSION, SIGKILL the pid in PID_FILE once (MARKER_FILE
    remembers it). Hooks run after the optimizer step, right before the trainer's transaction
    (batch, version announcement, consumed position), so that transaction meets the kill."""
    version, pid_file, marker = os.environ[KILL_COORDINATOR_ENV].split(":", 2)
    # No pid file yet: the test has not found the coordinator; the marker then stays missing
    # and the test says so.
    if step.version == int(version) and Path(pid_file).exists() and not Path(marker).exists():
        pid = int(Path(pid_file).read_text())
        os.kill(pid, signal.SIGKILL)
        Path(marker).write_text(str(time.time()))
    return {}


async def coordinator_killed(cluster: Cluster, tmp_path: Path) -> Measured:
    """kill -9 the broker that coordinates the trainer's transactions, from the trainer itself
    right before its commit of version 2; measured: until that version's TrainStep is in the log
    (the commit went through another coordinator)."""
    measured: Measured = {}
    pid_file, marker = tmp_path / "coordinator.pid", tmp_path / "coordinator.killed"
    os.environ[KILL_COORDINATOR_ENV] = f"2:{pid_file}:{marker}"

    async def chaos(log: Log, ctx: RunContext) -> None:
        assert isinstance(log, KafkaLog) and log._admin is not None
        node = await log._admin._client.coordinator_lookup(TXN_COORDINATOR, f"{ctx.run_id}-trainer")
        pid = cluster.pid(node)
        assert pid is not None
        pid_file.write_text(str(pid))
        await train_step(log, ctx, 2)
        measured["commit_after_kill_s"] = time.time() - float(marker.read_text())
        measured["heal_s"] = await cluster.heal()

    path = recipe(tmp_path, 4, "tests.faults.cluster:kill_pid_once")
    try:
        measured |= await supervised_run(cluster, tmp_path, path, chaos)
    finally:
        del os.environ[KILL_COORDINATOR_ENV]
    assert marker.exists(), "the trainer never reached version 2's commit"
    return measured


async def rolling_restart(cluster: Cluster, tmp_path: Path) -> Measured:
    """Restart the three brokers one after another (controlled shutdown, start, wait until every
    partition is in sync again) while the run trains; measured per node and in total."""
    measured: Measured = {}

    async def chaos(log: Log, ctx: RunContext) -> None:
        await train_step(log, ctx)
        t0 = time.monotonic()
        for node in range(1, cluster.size + 1):
            measured[f"node{node}_stop_s"] = await asyncio.to_thread(cluster.stop_node, node)
            measured[f"node{node}_back_in_sync_s"] = await cluster.heal()
        measured["rolling_restart_s"] = time.monotonic() - t0

    measured |= await supervised_run(cluster, tmp_path, recipe(tmp_path, 8), chaos)
    return measured


OUTAGE_S = 10.0


async def two_brokers_down(cluster: Cluster, tmp_path: Path, max_versions: int = 5) -> Measured:
    """kill -9 two of the three brokers (all but the leader of trajectories[0]). A write must
    then block, unacknowledged (min.insync.replicas=2 cannot be met, and the KRaft quorum is
    lost); once one broker is back it must be acknowledged, once. Measured: until that
    acknowledgement after the restart began, and the restart itself."""
    measured: Measured = {}

    async def chaos(log: Log, ctx: RunContext) -> None:
        await train_step(log, ctx)
        survivor = await leader_of(cluster, ctx.streams.trajectories)
        probe_stream = f"{ctx.run_id}.probe"
        async with open_log(cluster.url, append_timeout_s=300.0) as probe:
            await probe.ensure_stream(probe_stream, 1)
            victims = [n for n in range(1, cluster.size + 1) if n != survivor]
            for node in victims:
                cluster.kill(node)
            write = asyncio.create_task(probe.append(probe_stream, b"written-while-2-down"))
            await asyncio.sleep(OUTAGE_S)
            assert not write.done(), f"a write was acknowledged with two brokers down: {write}"
            t_restart = time.monotonic()
            measured["node_start_s"] = await asyncio.to_thread(cluster.start_node, victims[0])
            await asyncio.wait_for(write, 300)
            measured["write_acknowledged_s"] = time.monotonic() - t_restart
            measured["heal_s"] = await cluster.heal()
            records = await probe.read_all(probe_stream)
            assert [r.value for r in records] == [b"written-while-2-down"], records

    measured |= await supervised_run(cluster, tmp_path, recipe(tmp_path, max_versions), chaos)
    return measured


SCENARIOS = {"leader_killed": leader_killed, "coordinator_killed": coordinator_killed,
             "rolling_restart": rolling_restart, "two_brokers_down": two_brokers_down}
