"""Kafka ACLs for one run: producers write trajectories but can never announce weights.

    async with open_log("kafka://broker:9092?security_protocol=SASL_SSL&sasl_mechanism="
                        "SCRAM-SHA-512&sasl_username=admin") as admin:   # a super user
        await grant(admin.config, run_acls("run42", producer="producer", trainer="trainer",
                                           producer_group="producers", trainer_group="trainer"))

Why ACLs per role: a producer runs the most code that is not ours (reward functions, rollout
hooks, an inference engine) and only ever needs to append trajectories; if it could write the
weights stream, a bug or a compromised producer could announce weights every other producer would
load. With these ACLs the broker refuses it, and streamrl surfaces the refusal as
`NotAuthorizedError` naming the principal and the stream.

Sent as one CreateAcls request through aiokafka's protocol classes (aiokafka has no ACL admin
API), so granting a run's ACLs takes milliseconds, not a JVM start per rule.
"""

from __future__ import annotations

from enum import IntEnum

import aiokafka.errors as kerr
import msgspec
from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.admin import CreateAclsRequest, CreateAclsRequest_v1

from streamrl.log.base import LogError
from streamrl.log.kafka.config import KafkaLogConfig
from streamrl.streams import RunStreams


class Resource(IntEnum):  # Kafka's ResourceType codes
    TOPIC = 2
    GROUP = 3
    TRANSACTIONAL_ID = 5


class Op(IntEnum):  # Kafka's AclOperation codes
    READ = 3
    WRITE = 4
    DESCRIBE = 8
    DESCRIBE_CONFIGS = 10


LITERAL, PREFIXED, ALLOW = 3, 4, 3


class Acl(msgspec.Struct, frozen=True, kw_only=True):
    """Allow `principal` (a SASL user name) `operation` on one resource (or a name prefix)."""

    principal: str
    resource: Resource
    name: str
    operation: Op
    prefixed: bool = False


def run_acls(run_id: str, *, producer: str, trainer: str, producer_group: str,
             trainer_group: str) -> list[Acl]:
    """What each role of run `run_id` needs, and nothing more. `producer` and `trainer` are the
    roles' SASL user names; `producer_group` and `trainer_group` the consumer groups whose
    positions they commit (the run's PRODUCER_GROUP and TRAINER_GROUP: the log is the bottom
    layer and does not know them). The driver that creates the streams and publishes version 0
    runs as an operator allowed to create topics."""
    s = RunStreams(run_id)
    topic, tid, group = Resource.TOPIC, Resource.TRANSACTIONAL_ID, Resource.GROUP
    rules = [
        # Producers read prompts, announcements and the run's events (RunStarted holds the
        # recipe); they write trajectories, lifecycle events and dead letters.
        *[(producer, topic, name, Op.READ) for name in (s.prompts, s.weights, s.events)],
        *[(producer, topic, name, Op.WRITE) for name in (s.trajectories, s.events, s.dlq)],
        (producer, group, producer_group, Op.READ),  # prompt positions, committed in txns
        # The trainer reads what it trains on and what resume needs; it writes weights.
        *[(trainer, topic, name, Op.READ)
          for name in (s.trajectories, s.prompts, s.weights, s.events)],
        *[(trainer, topic, name, Op.WRITE) for name in (s.weights, s.events, s.prompts, s.dlq)],
        (trainer, group, trainer_group, Op.READ),
        (trainer, tid, f"{run_id}-trainer", Op.WRITE),
        (trainer, tid, f"{run_id}-trainer", Op.DESCRIBE),
        # Every process checks at start that the streams it uses keep their history
        # (KafkaLog.ensure_stream reads their retention settings).
        *[(role, topic, name, Op.DESCRIBE_CONFIGS) for role in (producer, trainer)
          for name in (s.prompts, s.trajectories, s.weights, s.events, s.dlq)],
    ]
    acls = [Acl(principal=p, resource=r, name=n, operation=o) for p, r, n, o in rules]
    # One transactional id per producer: <run>-producer-<index>.
    acls += [Acl(principal=producer, resource=tid, name=f"{run_id}-producer-", operation=op,
                 prefixed=True) for op in (Op.WRITE, Op.DESCRIBE)]
    return acls


class _CreateAcls(CreateAclsRequest):
    """CreateAcls v1 with many creations (aiokafka's builder sends one)."""

    def __init__(self, acls: list[Acl]) -> None:
        self._acls = acls

    def build(self, request_struct_class: type) -> CreateAclsRequest_v1:
        return CreateAclsRequest_v1([
            (int(a.resource), a.name, PREFIXED if a.prefixed else LITERAL, f"User:{a.principal}",
             "*", int(a.operation), ALLOW) for a in self._acls])


async def grant(config: KafkaLogConfig, acls: list[Acl]) -> None:
    """Create `acls` (idempotent: an existing ACL is kept). `config` must log in as a principal
    allowed to alter ACLs (a super user, or Alter on the cluster)."""
    client = AIOKafkaClient(**config.admin_settings())
    try:
        await client.bootstrap()
        resp = await client.send(client.get_random_node(), _CreateAcls(acls))
    finally:
        await client.close()
    failed = [(acl, code, msg) for acl, (code, msg) in
              zip(acls, resp.creation_responses, strict=True) if code]
    if failed:
        acl, code, msg = failed[0]
        raise LogError(f"creating {len(failed)} ACL(s) failed, first {acl}: "
                       f"{kerr.for_code(code).__name__}: {msg}")
