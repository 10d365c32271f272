"""Fixtures of the fault and security tests: private brokers (never the shared one)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.faults.broker import Broker

SASL_USERS = {"admin": "admin-secret", "trainer": "trainer-secret", "producer": "producer-secret"}


def _need_java() -> None:
    if shutil.which("java") is None:
        pytest.skip("java not found: the private brokers of these tests need Java 17+")


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A plaintext broker of this module alone, which its tests may kill, pause and restart."""
    _need_java()
    b = Broker(tmp_path_factory.mktemp("kafka"))
    b.start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A broker with SASL/SCRAM-SHA-512 on its client port and ACLs enforced (KRaft's
    StandardAuthorizer); users admin (super user), trainer and producer."""
    _need_java()
    users = " ".join(f"{u}:{p}" for u, p in SASL_USERS.items())
    b = Broker(tmp_path_factory.mktemp("kafka-sasl"), sasl_users=users)
    b.start()
    yield b
    b.stop()
