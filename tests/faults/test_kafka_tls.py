"""Kafka over TLS for real: a private broker on an SSL listener with scripts/kafka.sh's throwaway
CA (certificate for 127.0.0.1 only, so that `localhost` is a name it does not hold). The log does
its whole round trip over TLS; a wrong CA, a wrong host name, a refused client certificate and a
port without TLS each fail in seconds with the broker and the reason named."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamrl.log import open_log
from streamrl.log.kafka import KafkaTLSError
from tests.faults.broker import Broker
from tests.faults.tls_helpers import need_tools, round_trip, self_signed, start_fails

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def module_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    need_tools()
    b = Broker(tmp_path_factory.mktemp("kafka-tls"), tls=True, tls_hosts="127.0.0.1",
               client_auth="requested")
    b.start()
    yield b
    b.stop()


@pytest.fixture
def tls_broker(module_broker: Broker) -> Broker:
    """Client certificates optional (validated when presented)."""
    if module_broker.client_auth != "requested":
        module_broker.restart(client_auth="requested")
    return module_broker


@pytest.fixture
def mtls_broker(module_broker: Broker) -> Broker:
    """Client certificates required (mutual TLS); the same data and CA."""
    if module_broker.client_auth != "required":
        module_broker.restart(client_auth="required")
    return module_broker


def tls_url(broker: Broker, host: str = "127.0.0.1", **query: object) -> str:
    extra = "".join(f"&{k}={v}" for k, v in {"ssl_cafile": broker.ca, **query}.items())
    return f"kafka://{host}:{broker.port}?security_protocol=SSL{extra}"


async def test_the_log_does_its_round_trip_over_tls(tls_broker: Broker) -> None:
    await round_trip(tls_url(tls_broker))


async def test_closing_right_after_a_read_is_quick(tls_broker: Broker) -> None:
    """A reader's prefetch answer in flight at close made uvloop's TLS close wait 30 s for the
    broker's close_notify (MagicStack/uvloop#471; about 3 closes in 8); the log bounds it."""
    stream = f"tls-close-{uuid.uuid4().hex[:8]}.s"
    for i in range(4):
        log = open_log(tls_url(tls_broker))
        async with log:
            if i == 0:
                await log.ensure_stream(stream, 1)
                await log.append(stream, b"x")
            assert len(await log.read(stream, 0, 0, timeout_s=10)) == 1
            t0 = time.monotonic()
        assert time.monotonic() - t0 < 5.0


async def test_a_wrong_ca_fails_fast_naming_the_broker_and_the_ca(tls_broker: Broker,
                                                                  tmp_path: Path) -> None:
    rogue_ca, _ = self_signed(tmp_path, "rogue-ca")
    message = await start_fails(tls_url(tls_broker, ssl_cafile=rogue_ca), KafkaTLSError)
    assert f"TLS with kafka at 127.0.0.1:{tls_broker.port} failed" in message
    assert "not signed by a CA this client trusts" in message and str(rogue_ca) in message
    # No ssl_cafile: the system CAs, which never signed a throwaway CA's certificates.
    url = f"kafka://127.0.0.1:{tls_broker.port}?security_protocol=SSL"
    assert "the system CAs" in await start_fails(url, KafkaTLSError)


async def test_the_host_name_is_checked_unless_turned_off(tls_broker: Broker, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """The certificate names 127.0.0.1, not localhost (the same broker): refused by default;
    ssl_check_hostname=false connects, with a warning, and still refuses a certificate that
    the CA did not sign."""
    message = await start_fails(tls_url(tls_broker, host="localhost"), KafkaTLSError)
    assert f"kafka at localhost:{tls_broker.port}" in message
    assert "does not name 'localhost'" in message and "ssl_check_hostname=false" in message
    with caplog.at_level(logging.WARNING, logger="streamrl.log.kafka.options"):
        await round_trip(tls_url(tls_broker, host="localhost", ssl_check_hostname="false"))
    assert "checked against the CA but not against their host names" in caplog.text
    rogue_ca, _ = self_signed(tmp_path, "rogue-ca")
    url = tls_url(tls_broker, host="localhost", ssl_check_hostname="false", ssl_cafile=rogue_ca)
    assert "not signed by a CA" in await start_fails(url, KafkaTLSError)


async def test_a_client_certificate_from_the_ca_is_accepted_and_a_strangers_refused(
        tls_broker: Broker, tmp_path: Path) -> None:
    cert, key = tls_broker.client_cert("trainer")
    await round_trip(tls_url(tls_broker, ssl_certfile=cert, ssl_keyfile=key))
    stranger, stranger_key = self_signed(tmp_path, "stranger")
    message = await start_fails(tls_url(tls_broker, ssl_certfile=stranger,
                                        ssl_keyfile=stranger_key), KafkaTLSError)
    assert "the broker refused this client's certificate" in message


async def test_a_port_without_tls_is_named_as_such(kafka_url: str) -> None:
    """A TLS client against the shared plaintext broker (one failed handshake, nothing else)."""
    url = f"{kafka_url}?security_protocol=SSL"
    assert "TLS" in await start_fails(url, KafkaTLSError)


async def test_unreadable_tls_files_are_refused_with_their_names(tls_broker: Broker,
                                                                 tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    message = await start_fails(tls_url(tls_broker, ssl_cafile=junk), ValueError)
    assert re.search(r"ssl_cafile=.*junk\.pem.* holds no usable CA", message), message
    message = await start_fails(tls_url(tls_broker, ssl_certfile=junk), ValueError)
    assert re.search(r"ssl_certfile=.*junk\.pem.*not a PEM certificate", message), message
    # An encrypted key is refused, not a passphrase prompt on the terminal.
    cert, key = self_signed(tmp_path, "enc", passphrase="secret")
    message = await start_fails(tls_url(tls_broker, ssl_certfile=cert, ssl_keyfile=key),
                                ValueError)
    assert re.search(r"ssl_keyfile=.*enc\.key.* is encrypted", message), message


async def test_required_client_certificates(mtls_broker: Broker) -> None:
    """ssl.client.auth=required (last: it restarts the module's broker)."""
    message = await start_fails(tls_url(mtls_broker), KafkaTLSError)
    assert "refused this client's certificate, or its lack of one" in message
    assert "ssl.client.auth=required" in message
    cert, key = mtls_broker.client_cert("producer")
    await round_trip(tls_url(mtls_broker, ssl_certfile=cert, ssl_keyfile=key))
