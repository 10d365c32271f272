"""Runs shared by the replay tests: one real tiny run per backend (and one whose trainer was
killed and resumed), made once per session with the real CLI, log and processes."""

from __future__ import annotations

import asyncio
import signal
import uuid
from pathlib import Path

import pytest

from streamrl import aio
from streamrl.log import open_log
from streamrl.recipe.config import load_config
from streamrl.run.driver import start_run
from streamrl.schemas import TrainStep, decode_event
from tests.helpers import TINY, spawn, streamrl
from tests.replay.replay_util import MAX_VERSIONS, MadeRun


@pytest.fixture(scope="session")
def recipe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny recipe with a reward that varies (weights change every version), 4 versions,
    checkpoints at 2 and 4."""
    text = TINY.read_text().replace("tests.run.tiny_task:reward", "tests.replay.replay_util:reward")
    text = text.replace("max_versions = 3", f"max_versions = {MAX_VERSIONS}")
    text = text.replace("tests.run.tiny_task:init", "tests.replay.replay_util:init")
    assert text.count("replay_util:") == 2 and f"max_versions = {MAX_VERSIONS}" in text
    path = tmp_path_factory.mktemp("recipe") / "replay_tiny.toml"
    path.write_text(text)
    return path


def make_run(recipe: Path, root: Path, log_url: str) -> MadeRun:
    run_id = f"rp-{uuid.uuid4().hex[:8]}"
    out = streamrl("run", str(recipe), "--log", log_url, "--run", run_id, "--runs-dir",
                   str(root / "runs"))
    assert out.returncode == 0, out.stderr[-4000:] + out.stdout[-2000:]
    return MadeRun(log_url=log_url, run_id=run_id, runs_dir=root / "runs")


@pytest.fixture(scope="session")
def file_run(recipe: Path, tmp_path_factory: pytest.TempPathFactory) -> MadeRun:
    root = tmp_path_factory.mktemp("file_run")
    return make_run(recipe, root, str(root / "log"))


@pytest.fixture(scope="session")
def kafka_run(recipe: Path, tmp_path_factory: pytest.TempPathFactory, kafka_url: str) -> MadeRun:
    return make_run(recipe, tmp_path_factory.mktemp("kafka_run"), kafka_url)


async def _killed_and_resumed(recipe: Path, root: Path) -> MadeRun:
    """A run whose trainer is SIGKILLed right after its first committed version, then
    restarted (it resumes from checkpoint + log) to the end."""
    log_url, run_id = str(root / "log"), "killed"
    async with open_log(log_url) as log:
        ctx, v0 = await start_run(load_config(recipe), log, run_id, root / "runs",
                                  recipe=str(recipe))
        common = ("--log", log_url, "--run", run_id)
        with v0:
            producer = await spawn("streamrl.producers", *common)
            trainer = await spawn("streamrl.consumers.trainer", *common)
            async for record in log.follow(ctx.streams.events, 0, poll_s=0.05):
                if isinstance(decode_event(record.value, "events"), TrainStep):
                    break
            trainer.send_signal(signal.SIGKILL)
            assert await trainer.wait() == -signal.SIGKILL
            restarted = await spawn("streamrl.consumers.trainer", *common)
            assert await asyncio.wait_for(restarted.wait(), 480) == 0
            producer.terminate()
            await producer.wait()
    return MadeRun(log_url=log_url, run_id=run_id, runs_dir=root / "runs")


@pytest.fixture(scope="session")
def killed_run(recipe: Path, tmp_path_factory: pytest.TempPathFactory) -> MadeRun:
    return aio.run(_killed_and_resumed(recipe, tmp_path_factory.mktemp("killed")))
