"""A tiny checkpoint whose chat template renders tools, written once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.agent.scripted import write_tool_checkpoint


@pytest.fixture(scope="session")
def tool_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tool_checkpoint(tmp_path_factory.mktemp("agent") / "tiny-tools")
