"""The Kafka log's cluster-side calls: topics (streams) and consumer-group offsets.

Group offsets go straight to the group coordinator with OffsetCommit/OffsetFetch as a *simple*
group (generation -1, no member id). That is what a standalone consumer with manual assignment
does, and it needs no group membership, no rebalancing and no consumer per group; the offsets
land in `__consumer_offsets` like any consumer's and survive broker restarts. Each offset carries
its metadata string (OffsetCommit/OffsetFetch have a field for it; the broker refuses more than
`offset.metadata.max.bytes`, 4096 by default, which `base.committed_positions` checks first).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Mapping
from typing import Any

import aiokafka.errors as kerr
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.client import AIOKafkaClient
from aiokafka.conn import create_conn
from aiokafka.protocol.commit import OffsetCommitRequest, OffsetFetchRequest
from aiokafka.protocol.metadata import MetadataRequest

from streamrl.log.base import Committed, LogError, LogWriteError, StreamPartition
from streamrl.log.kafka.config import KafkaLogConfig
from streamrl.log.kafka.options import RETENTION_KEYS
from streamrl.log.kafka.tls import tls_problem

GROUP_COORDINATOR = 0
INTERNAL_TOPICS = ("__consumer_offsets", "__transaction_state")

# Errors after which asking again (after finding the coordinator anew) can succeed: the
# coordinator moved, is loading its partition after a restart, or the connection dropped.
_RETRY_CODES = {
    kerr.CoordinatorLoadInProgressError.errno,
    kerr.CoordinatorNotAvailableError.errno,
    kerr.NotCoordinatorError.errno,
    kerr.RequestTimedOutError.errno,
}
_TRANSIENT = (
    kerr.NodeNotReadyError,
    kerr.RequestTimedOutError,
    kerr.KafkaConnectionError,
    kerr.CoordinatorLoadInProgressError,
    kerr.CoordinatorNotAvailableError,
    kerr.NotCoordinatorError,
    kerr.KafkaTimeoutError,  # no answer at all: the broker is down or restarting
)


class KafkaAdmin:
    """Topic and group-offset operations; `start()` before use, `stop()` (idempotent) after."""

    def __init__(self, config: KafkaLogConfig) -> None:
        self._config = config
        self._client = AIOKafkaClient(**config.admin_settings())
        self._admin = AIOKafkaAdminClient(**config.admin_settings())
        self._coordinators: dict[str, int] = {}

    async def start(self) -> None:
        await self._client.bootstrap()
        await self._admin.start()

    async def stop(self) -> None:
        await asyncio.gather(self._client.close(), self._admin.close(), return_exceptions=True)

    # -- topics ---------------------------------------------------------------------------------
    async def create_topic(self, name: str, num_partitions: int) -> None:
        """Create `name` unless it exists (another writer may create it at the same moment)."""
        replication_factor, min_isr = self._config.replication(await self.num_brokers(name))
        topic = NewTopic(name, num_partitions, replication_factor,
                         topic_configs={**self._config.new_topic_configs(),
                                        "min.insync.replicas": str(min_isr)})
        resp = await self._admin.create_topics([topic])
        for _name, code, *rest in resp.topic_errors:
            if code in (0, kerr.TopicAlreadyExistsError.errno):
                continue
            detail = f"{kerr.for_code(code).__name__}: {rest[0] if rest else ''}"
            if code == kerr.TopicAuthorizationFailedError.errno:
                raise LogError(f"creating stream {name!r}: not authorized (Kafka ACLs deny this "
                               "principal Create on it); an operator creates a run's streams, "
                               "see docs/kafka-security.md")
            if code == kerr.InvalidTopicError.errno:
                # Kafka allows [a-zA-Z0-9._-], at most 249 characters.
                raise ValueError(f"invalid stream name {name!r} for Kafka ({detail})")
            raise LogError(f"creating stream {name!r} failed: {detail}")

    async def partition_count(self, name: str, *, wait_s: float = 0.0) -> int | None:
        """Partitions of `name`, or None if it does not exist. With `wait_s`, waits that long for
        a just-created topic to show up with a leader for every partition (metadata propagates
        from the controller to the broker a moment after CreateTopics returns)."""
        deadline = time.monotonic() + wait_s
        while True:
            topics = await self._metadata([name])
            info = next((t for t in topics if t["topic"] == name), None)
            known = info is not None and info["error_code"] == 0 and info["partitions"]
            if known and all(p["leader"] >= 0 for p in info["partitions"]):
                return len(info["partitions"])
            if time.monotonic() >= deadline:
                return len(info["partitions"]) if known else None
            await asyncio.sleep(0.05)

    async def num_brokers(self, *streams: str) -> int:
        """Brokers of the cluster: those registered now plus any that the replica lists of the
        internal topics (or `streams`) name: a broker that is down drops out of the metadata's
        broker list, not out of its partitions' replica lists, so it still counts. Not every
        topic is asked about: a shared broker may hold thousands."""
        resp = await self._metadata_response([*INTERNAL_TOPICS, *streams])
        nodes = {b["node_id"] for b in resp["brokers"]}
        for topic in resp["topics"]:
            for partition in topic["partitions"]:
                nodes.update(partition["replicas"])
        return len(nodes)

    async def replication_of(self, name: str) -> tuple[int, int]:
        """(replication factor, min.insync.replicas) of an existing topic; the factor is its
        smallest partition's."""
        (info,) = [t for t in await self._metadata([name]) if t["topic"] == name]
        replication_factor = min(len(p["replicas"]) for p in info["partitions"])
        configs = await self.retention_configs(name, ("min.insync.replicas",))
        return replication_factor, int(configs.get("min.insync.replicas", "1"))

    async def retention_configs(self, name: str,
                                keys: tuple[str, ...] = RETENTION_KEYS) -> dict[str, str]:
        """The topic's effective settings of `keys` (default: `options.RETENTION_KEYS`; a
        broker default counts as the topic's own)."""
        resource = ConfigResource(ConfigResourceType.TOPIC, name, dict.fromkeys(keys))
        resp = (await self._admin.describe_configs([resource]))[0].to_object()
        (found,) = resp["resources"]
        if found["error_code"]:
            error = kerr.for_code(found["error_code"])
            hint = (" (a principal that uses a stream needs DescribeConfigs on it, to check that "
                    "it keeps its history: `streamrl.log.kafka.acl.run_acls` grants it)"
                    if error is kerr.TopicAuthorizationFailedError else "")
            raise LogError(f"reading the configs of stream {name!r} failed: "
                           f"{error.__name__}: {found['error_message']}{hint}")
        return {e["config_names"]: e["config_value"] for e in found["config_entries"]
                if e["config_value"] is not None}

    async def topic_names(self) -> list[str]:
        return [t["topic"] for t in await self._metadata(None) if not t["is_internal"]]

    async def _metadata(self, topics: list[str] | None) -> list[dict]:
        return (await self._metadata_response(topics))["topics"]

    async def _metadata_response(self, topics: list[str] | None) -> dict:
        """Asks the known brokers in turn: on a cluster with a broker down, the one a random
        pick finds may be the dead one (metadata lists it until it is fenced). Retries for at
        most `unavailable_s` while none answers."""
        # allow_auto_topic_creation=False: asking about a missing stream must not create it,
        # whatever the broker's auto.create.topics.enable says.
        request = MetadataRequest(topics, allow_auto_topic_creation=False)
        deadline = time.monotonic() + max(self._config.request_timeout_s,
                                          self._config.unavailable_s)
        while True:
            nodes = sorted(b.nodeId for b in self._client.cluster.brokers())
            random.shuffle(nodes)
            for node in nodes:
                try:
                    return (await self._client.send(node, request)).to_object()
                except _TRANSIENT as exc:
                    last = type(exc).__name__
            if not nodes:
                last = "no broker known"
            if time.monotonic() >= deadline:
                err = LogError(f"no kafka broker answered a metadata request: {last}")
                err.retriable = True
                raise err
            await asyncio.sleep(0.1)

    # -- consumer-group offsets -----------------------------------------------------------------
    async def commit_offsets(
        self, group: str, offsets: Mapping[StreamPartition, Committed]
    ) -> None:
        by_topic: dict[str, list[tuple[int, int, str]]] = {}
        for (stream, partition), (offset, metadata) in offsets.items():
            by_topic.setdefault(stream, []).append((partition, int(offset), metadata))
        request = OffsetCommitRequest(
            group,
            OffsetCommitRequest.DEFAULT_GENERATION_ID,
            "",
            OffsetCommitRequest.DEFAULT_RETENTION_TIME,
            list(by_topic.items()),
        )
        resp = await self._group_call(group, request)
        if codes := _error_codes(resp):
            raise LogWriteError(f"committing offsets of group {group!r} failed: {_names(codes)}")

    async def fetch_offsets(
        self, group: str, partitions: list[StreamPartition]
    ) -> dict[StreamPartition, Committed | None]:
        """Each partition's committed offset with its metadata; None where the group never
        committed."""
        by_topic: dict[str, list[int]] = {}
        for stream, partition in partitions:
            by_topic.setdefault(stream, []).append(partition)
        resp = await self._group_call(group, OffsetFetchRequest(group, list(by_topic.items())))
        if codes := _error_codes(resp):
            raise LogError(f"reading offsets of group {group!r} failed: {_names(codes)}")
        result: dict[StreamPartition, Committed | None] = dict.fromkeys(partitions)
        for topic, parts in resp.topics:
            for partition, offset, metadata, *_ in parts:
                # -1 is how the coordinator says "this group never committed here".
                result[StreamPartition(topic, partition)] = (
                    Committed(offset, metadata or "") if offset >= 0 else None)
        return result

    async def _group_call(self, group: str, request: Any) -> Any:
        """Send a group request to the group's coordinator, finding the coordinator anew and
        retrying while it moves or loads or the broker restarts, for at most `unavailable_s`."""
        deadline = time.monotonic() + max(self._config.request_timeout_s,
                                          self._config.unavailable_s)
        while True:
            try:
                node = self._coordinators.get(group)
                if node is None:
                    node = await self._client.coordinator_lookup(GROUP_COORDINATOR, group)
                    self._coordinators[group] = node
                resp = await self._client.send(node, request)
                codes = _error_codes(resp)
                if not set(codes) & _RETRY_CODES:
                    return resp
                last = _names(codes)
            except _TRANSIENT as exc:
                last = type(exc).__name__
            self._coordinators.pop(group, None)
            if time.monotonic() >= deadline:
                err = LogError(f"group coordinator of {group!r} unavailable: {last}")
                err.retriable = True
                raise err
            await asyncio.sleep(0.1)


class NotAuthenticatedError(LogError):
    """The broker refused the SASL login (wrong user, password or mechanism)."""

    retriable = False


_SASL_ERRORS = (kerr.SaslAuthenticationFailed, kerr.UnsupportedSaslMechanismError,
                kerr.IllegalSaslStateError)


async def probe_connection(config: KafkaLogConfig) -> LogError | None:
    """Why the first bootstrap broker refuses a login, if it does. aiokafka's bootstrap failure
    says only "unable to bootstrap" and logs the cause, so a wrong password would read like a
    broker that is down; one direct connection recovers the real reason."""
    host, _, port = config.bootstrap.split(",")[0].rpartition(":")
    settings = config.common_settings()
    try:
        conn = await create_conn(
            host, int(port), client_id=config.client_id,
            request_timeout_ms=settings["request_timeout_ms"],
            ssl_context=settings.get("ssl_context"), security_protocol=config.security_protocol,
            sasl_mechanism=config.sasl_mechanism or "PLAIN",
            sasl_plain_username=config.sasl_username, sasl_plain_password=config.password())
    except _SASL_ERRORS as exc:
        return NotAuthenticatedError(
            f"kafka at {config.bootstrap} refused the {config.sasl_mechanism} login of user "
            f"{config.sasl_username!r}: {exc} (check the user, the password in "
            f"{config.sasl_password_env} and sasl_mechanism)")
    except Exception:  # TLS trouble is named; unreachable etc.: the caller's error says enough
        return await tls_problem(config)
    conn.close()
    return None


def _error_codes(resp: Any) -> list[int]:
    """Non-zero error codes of an OffsetCommit/OffsetFetch response (top level and per partition;
    the error code is the last field of each partition entry in every version)."""
    top = getattr(resp, "error_code", 0)
    return ([top] if top else []) + [p[-1] for _t, parts in resp.topics for p in parts if p[-1]]


def _names(codes: list[int]) -> str:
    return ", ".join(sorted({kerr.for_code(c).__name__ for c in codes}))
