"""Kafka security for real: a broker with SASL/SCRAM and ACLs (KRaft StandardAuthorizer), the
run's ACLs from `streamrl.log.kafka.acl.run_acls`: producers cannot write the weights stream,
the trainer can, and a whole run works with each process under its own principal."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from streamrl import aio
from streamrl.log import Append, open_log
from streamrl.log.kafka import KafkaLog, NotAuthenticatedError, NotAuthorizedError
from streamrl.log.kafka.acl import grant, run_acls
from streamrl.recipe.config import load_config
from streamrl.recipe.context import PRODUCER_GROUP, TRAINER_GROUP
from streamrl.run.driver import start_run
from streamrl.schemas import TrainStep, decode_event
from tests.faults.broker import Broker
from tests.faults.conftest import SASL_USERS
from tests.helpers import TINY, spawn

SCRAM = "security_protocol=SASL_PLAINTEXT&sasl_mechanism=SCRAM-SHA-512"


def url_as(broker: Broker, user: str) -> str:
    return f"{broker.url}?{SCRAM}&sasl_username={user}"


def open_as(broker: Broker, user: str, **options: object) -> KafkaLog:
    log = open_log(url_as(broker, user), sasl_password=SASL_USERS[user], **options)
    assert isinstance(log, KafkaLog)
    return log


async def new_run(broker: Broker) -> str:
    """A run's streams created by the operator (admin) and its ACLs granted."""
    run_id = f"acl-{uuid.uuid4().hex[:8]}"
    async with open_as(broker, "admin") as admin:
        for kind in ("prompts", "trajectories", "weights", "events", "dlq"):
            await admin.ensure_stream(f"{run_id}.{kind}", 1)
        await grant(admin.config, run_acls(run_id, producer="producer", trainer="trainer",
                                           producer_group=PRODUCER_GROUP,
                                           trainer_group=TRAINER_GROUP))
    return run_id


async def test_a_producer_cannot_write_weights_and_the_trainer_can(sasl_broker: Broker) -> None:
    run_id = await new_run(sasl_broker)
    async with open_as(sasl_broker, "producer", writer_id=f"{run_id}-producer-0") as log:
        await log.append(f"{run_id}.trajectories", b"a trajectory")
        with pytest.raises(NotAuthorizedError) as info:
            await log.append(f"{run_id}.weights", b"forged announcement")
        message = str(info.value)
        assert "User:producer" in message and f"{run_id}.weights" in message
        assert info.value.retriable is False
        with pytest.raises(NotAuthorizedError, match=f"{run_id}.weights"):
            await log.transact("producers", {}, [Append(stream=f"{run_id}.weights", value=b"x")])
        with pytest.raises(NotAuthorizedError, match=f"{run_id}-trainer"):
            await open_as(sasl_broker, "producer", writer_id=f"{run_id}-trainer").start()
    async with open_as(sasl_broker, "trainer", writer_id=f"{run_id}-trainer") as log:
        await log.transact("trainer", {}, [Append(stream=f"{run_id}.weights", value=b"v1")])
        # commit markers land a moment after the commit returns; then readers see the record
        [record] = await log.read(f"{run_id}.weights", 0, 0, timeout_s=10)
        assert record.value == b"v1"


async def test_a_wrong_password_is_named_as_such(sasl_broker: Broker) -> None:
    log = open_log(url_as(sasl_broker, "producer"), sasl_password="not-it",
                   request_timeout_s=5)
    with pytest.raises(NotAuthenticatedError, match=r"'producer'.*invalid credentials"):
        await log.start()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_run_works_with_each_process_under_its_own_principal(sasl_broker: Broker,
                                                               tmp_path: Path) -> None:
    """The driver as operator, the producer and the trainer as themselves: run_acls grants
    everything a real run needs (the password comes from the environment, not the URL)."""
    config = load_config(TINY)

    async def run() -> None:
        run_id = f"acl-{uuid.uuid4().hex[:8]}"
        async with open_as(sasl_broker, "admin", writer_id=f"{run_id}-driver") as admin:
            ctx, v0 = await start_run(config, admin, run_id, tmp_path / "runs", recipe=str(TINY))
            await grant(admin.config, run_acls(run_id, producer="producer", trainer="trainer",
                                               producer_group=PRODUCER_GROUP,
                                               trainer_group=TRAINER_GROUP))
            with v0:
                procs = [await spawn_as("streamrl.producers", sasl_broker, "producer", run_id),
                         await spawn_as("streamrl.consumers.trainer", sasl_broker, "trainer",
                                        run_id)]
                try:
                    assert await asyncio.wait_for(procs[1].wait(), 400) == 0
                finally:
                    for p in procs:
                        if p.returncode is None:
                            p.terminate()
                        await p.wait()
            events = [decode_event(r.value, "events")
                      for r in await admin.read_all(ctx.streams.events)]
            assert sum(isinstance(e, TrainStep) for e in events) == config.run.max_versions

    aio.run(run())


async def spawn_as(module: str, broker: Broker, user: str,
                   run_id: str) -> asyncio.subprocess.Process:
    return await spawn(module, "--log", url_as(broker, user), "--run", run_id,
                       STREAMRL_KAFKA_PASSWORD=SASL_USERS[user])
