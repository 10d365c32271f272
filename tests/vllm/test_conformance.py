"""The engine conformance suite (tests/engine/test_engine_conformance.py), every test of it that
takes a `backend`, against the vLLM adapter on the real CPU server. It is collected here rather
than as a parameter there so that it runs late in CI, after the background build of the vLLM
venv (.ci/run); a test added to the suite runs here too."""

from __future__ import annotations

import inspect
from collections.abc import Iterator

import pytest

from tests.engine import test_engine_conformance as suite
from tests.vllm.real import RealVLLM

pytestmark = pytest.mark.slow

globals().update({name: test for name, test in vars(suite).items()
                  if name.startswith("test_") and "backend" in inspect.signature(test).parameters})


@pytest.fixture
def backend(vllm_server: RealVLLM) -> Iterator[suite.Backend]:
    yield from suite.vllm_backend(vllm_server)
