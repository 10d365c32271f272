"""SASL over TLS for real: a private broker on a SASL_SSL listener (scripts/kafka.sh with
STREAMRL_KAFKA_TLS=1 and SASL users) with ACLs. Every mechanism the log offers logs in with the
password from STREAMRL_KAFKA_PASSWORD and does the log's round trip; the principals are who they
say (ACLs hold for PLAIN and SCRAM-SHA-256 users as for SCRAM-SHA-512); a wrong password and a
wrong CA fail fast, each named; client certificates are checked on a SASL_SSL listener too."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamrl.log import Append, open_log
from streamrl.log.kafka import (
    KafkaLog,
    KafkaTLSError,
    NotAuthenticatedError,
    NotAuthorizedError,
)
from streamrl.log.kafka.acl import grant, run_acls
from streamrl.recipe.context import PRODUCER_GROUP, TRAINER_GROUP
from tests.faults.broker import Broker
from tests.faults.tls_helpers import need_tools, round_trip, self_signed, start_fails

pytestmark = pytest.mark.slow

USERS = {"admin": "admin-secret", "trainer": "trainer-secret", "producer": "producer-secret"}
MECHANISMS = ["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"]


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    need_tools()
    users = " ".join(f"{u}:{p}" for u, p in USERS.items())
    b = Broker(tmp_path_factory.mktemp("kafka-sasl-ssl"), sasl_users=users, tls=True,
               client_auth="requested")
    b.start()
    yield b
    b.stop()


def url_as(broker: Broker, user: str, mechanism: str, cafile: Path | None = None) -> str:
    return (f"{broker.url}?security_protocol=SASL_SSL&ssl_cafile={cafile or broker.ca}"
            f"&sasl_mechanism={mechanism}&sasl_username={user}")


@pytest.mark.parametrize("mechanism", MECHANISMS)
async def test_each_mechanism_logs_in_and_does_the_round_trip(
        broker: Broker, mechanism: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMRL_KAFKA_PASSWORD", USERS["admin"])
    await round_trip(url_as(broker, "admin", mechanism))


@pytest.mark.parametrize("producer_mechanism, trainer_mechanism",
                         [("PLAIN", "SCRAM-SHA-256"), ("SCRAM-SHA-256", "PLAIN")])
async def test_acls_hold_for_every_mechanism(broker: Broker, producer_mechanism: str,
                                             trainer_mechanism: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A PLAIN or SCRAM-SHA-256 login is the principal it names: the producer cannot write
    the weights stream, the trainer can."""
    run_id = f"tls-acl-{uuid.uuid4().hex[:8]}"
    admin = open_log(url_as(broker, "admin", "SCRAM-SHA-512"), sasl_password=USERS["admin"])
    async with admin:
        assert isinstance(admin, KafkaLog)
        for kind in ("trajectories", "weights"):
            await admin.ensure_stream(f"{run_id}.{kind}", 1)
        await grant(admin.config, run_acls(run_id, producer="producer", trainer="trainer",
                                           producer_group=PRODUCER_GROUP,
                                           trainer_group=TRAINER_GROUP))
    monkeypatch.setenv("STREAMRL_KAFKA_PASSWORD", USERS["producer"])
    async with open_log(url_as(broker, "producer", producer_mechanism)) as log:
        await log.append(f"{run_id}.trajectories", b"a trajectory")
        with pytest.raises(NotAuthorizedError, match=rf"User:producer.*{run_id}\.weights"):
            await log.append(f"{run_id}.weights", b"forged announcement")
    monkeypatch.setenv("STREAMRL_KAFKA_PASSWORD", USERS["trainer"])
    async with open_log(url_as(broker, "trainer", trainer_mechanism),
                        writer_id=f"{run_id}-trainer") as log:
        await log.transact("trainer", {}, [Append(stream=f"{run_id}.weights", value=b"v1")])
        [record] = await log.read(f"{run_id}.weights", 0, 0, timeout_s=10)
        assert record.value == b"v1"


@pytest.mark.parametrize("mechanism", MECHANISMS)
async def test_a_wrong_password_is_named_as_such(broker: Broker, mechanism: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMRL_KAFKA_PASSWORD", "not-it")
    message = await start_fails(url_as(broker, "trainer", mechanism), NotAuthenticatedError)
    assert f"refused the {mechanism} login of user 'trainer'" in message
    assert "STREAMRL_KAFKA_PASSWORD" in message


async def test_a_wrong_ca_is_named_before_any_login(broker: Broker, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMRL_KAFKA_PASSWORD", USERS["trainer"])
    rogue_ca, _ = self_signed(tmp_path, "rogue-ca")
    message = await start_fails(url_as(broker, "trainer", "SCRAM-SHA-256", rogue_ca),
                                KafkaTLSError)
    assert f"kafka at 127.0.0.1:{broker.port}" in message and "not signed by a CA" in message


async def test_client_certificates_are_checked_on_sasl_ssl_too(
        broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Kafka ignores an unprefixed ssl.client.auth on SASL_SSL listeners (KIP-684); kafka.sh
    names the listener, so this broker (`requested`) checks a certificate that is sent."""
    monkeypatch.setenv("STREAMRL_KAFKA_PASSWORD", USERS["admin"])
    url = url_as(broker, "admin", "SCRAM-SHA-256")
    stranger, stranger_key = self_signed(tmp_path, "stranger")
    message = await start_fails(f"{url}&ssl_certfile={stranger}&ssl_keyfile={stranger_key}",
                                KafkaTLSError)
    assert "the broker refused this client's certificate" in message
    cert, key = broker.client_cert("admin")
    await round_trip(f"{url}&ssl_certfile={cert}&ssl_keyfile={key}")
