"""Shared fixtures: every async test runs on uvloop, the loop streamrl's services use; the local
Kafka broker; a log of each backend. Plain helpers (paths, child processes) are in helpers.py."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import uvloop


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict:
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture
def one_thread():
    """One torch intra-op thread for the test, restored afterwards. Tiny models' matmuls take
    microseconds; on a loaded 2-core machine OpenMP's barriers cost milliseconds each (measured:
    2.4 ms vs 15 us per linear, and a 3 s test taking 63 s with 2 threads). Folders of tiny-model
    tests use it for every test (their conftest), single files with `usefixtures`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def kafka_bootstrap() -> str:
    return os.environ.get("STREAMRL_KAFKA", "127.0.0.1:9092")


def kafka_reachable(bootstrap: str) -> bool:
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1.0):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def kafka_url() -> str:
    """The local broker (`scripts/kafka.sh start`). CI sets STREAMRL_REQUIRE_KAFKA=1 so a missing
    broker fails the run instead of silently skipping the Kafka tests."""
    bootstrap = kafka_bootstrap()
    if not kafka_reachable(bootstrap):
        if os.environ.get("STREAMRL_REQUIRE_KAFKA") == "1":
            pytest.fail(f"no Kafka broker at {bootstrap}; start one with scripts/kafka.sh start")
        pytest.skip(f"no Kafka broker at {bootstrap} (scripts/kafka.sh start)")
    return f"kafka://{bootstrap}"


@pytest.fixture(params=["file", "kafka"])
def log_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each backend in turn: a fresh file log in the test's folder, then the local broker."""
    if request.param == "file":
        return str(tmp_path / "log")
    return request.getfixturevalue("kafka_url")
