"""`streamrl up` against a real Docker engine: compose/docker-compose.yml on images built here
without a registry (scripts/images.sh), the arithmetic CI recipe with two producers, then a
crash (kill -9) of the trainer container and of a producer container while it trains (compose
restarts both; the trainer resumes from the log), `ps`, `scale` to three, the run finishing,
`audit` and `replay` against the broker inside compose, `down`, and a second `up` that finds the
first run's data in the volumes. Skips with the reason where no engine can run (.ci/run starts
one)."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from streamrl import aio
from streamrl.launch import compose
from streamrl.log import open_log
from streamrl.schemas import TrainStep, decode_event
from streamrl.streams import RunStreams
from tests.helpers import REPO, streamrl, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

RECIPE = "recipes/arithmetic/recipe_ci.toml"
VERSIONS = 40  # the recipe's own; its 1024 prompts make at most 64
CA = sorted(Path("/usr/local/share/ca-certificates").glob("*.crt"))


def _engine_or_skip() -> list[str]:
    try:
        compose.check_engine()
        return compose.compose_command()
    except compose.NoDockerEngine as error:
        pytest.skip(f"no Docker engine to run compose on: {error} (.ci/run starts dockerd)")
    except FileNotFoundError as error:
        pytest.skip(f"no docker command: {error}")


def _docker(*args: str) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True,
                          timeout=120).stdout.strip()


def _containers(service: str) -> list[str]:
    """Ids of the compose project's containers of `service`, running or not."""
    out = _docker("ps", "-a", "-q",
                  "--filter", f"label=com.docker.compose.project={compose.PROJECT}",
                  "--filter", f"label=com.docker.compose.service={service}")
    return out.split()


def _state(container: str) -> dict:
    return json.loads(_docker("inspect", "--format", "{{json .State}}", container))


def _restarts(container: str) -> int:
    return int(_docker("inspect", "--format", "{{.RestartCount}}", container))


def _crash(container: str) -> None:
    """kill -9 of the container's main process from the host: a crash, which the restart policy
    answers (`docker kill` would count as a manual stop)."""
    pid = _state(container)["Pid"]
    assert pid > 0, f"{container} is not running"
    os.kill(pid, 9)


def _versions(run_id: str) -> int:
    async def count() -> int:
        async with open_log(compose.HOST_LOG) as log:
            stream = RunStreams(run_id).events
            if stream not in await log.list_streams(run_id):
                return 0
            records = await log.read_all(stream)
            return sum(isinstance(decode_event(r.value, "events"), TrainStep) for r in records)
    try:
        return aio.run(count())
    except Exception:  # the broker is still starting
        return 0


def _in_trainer(*args: str) -> subprocess.CompletedProcess[str]:
    """A streamrl command in a fresh container of the trainer's image, beside the broker and on
    the runs volume (the run's files are there, not on the host)."""
    cmd = [*compose.compose_command(), "-p", compose.PROJECT, "-f", str(compose.COMPOSE_FILE),
           "run", "--rm", "--no-deps", "trainer", "streamrl", *args]
    env = {**os.environ, **compose.LOCAL_IMAGES, "STREAMRL_RUN": "unused"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=REPO)


@pytest.fixture
def clean_project():
    cmd = [*_engine_or_skip(), "-p", compose.PROJECT, "-f", str(compose.COMPOSE_FILE),
           "down", "--volumes", "--remove-orphans"]
    env = {**os.environ, "STREAMRL_RUN": "cleanup"}
    subprocess.run(cmd, capture_output=True, env=env, timeout=300)
    yield
    subprocess.run(cmd, capture_output=True, env=env, timeout=300)


def test_up_scale_crash_audit_replay_down_and_up_again(clean_project, tmp_path: Path) -> None:
    runs = str(tmp_path / "runs")
    run_id = f"compose-{uuid.uuid4().hex[:6]}"
    t0 = time.monotonic()
    up = streamrl("up", "--build-local", *(["--ca"] if CA else []), "--recipe", RECIPE,
                  "--producers", "2", "--max-versions", str(VERSIONS), "--run", run_id,
                  "--runs-dir", runs, timeout=1500)
    assert up.returncode == 0, up.stdout + up.stderr
    built_s = time.monotonic() - t0
    wait_until(lambda: _versions(run_id) >= 2, "the compose run trains two versions", 600, 3)

    before = _versions(run_id)
    assert before < VERSIONS - 5, f"the run is nearly over ({before} versions): crash it earlier"
    trainer = _containers("trainer")[0]
    _crash(trainer)
    wait_until(lambda: _restarts(trainer) >= 1, "compose restarts the crashed trainer", 180, 2)
    wait_until(lambda: _versions(run_id) > before, "the restarted trainer trains on", 600, 3)
    producer = _containers("producer")[0]
    _crash(producer)
    wait_until(lambda: _restarts(producer) >= 1, "compose restarts the crashed producer", 180, 2)

    ps = streamrl("ps", "--run", run_id, "--runs-dir", runs)
    assert ps.returncode == 0, ps.stderr
    assert "producer" in ps.stdout and "trainer" in ps.stdout and "kafka" in ps.stdout

    scale = streamrl("scale", "--run", run_id, "--runs-dir", runs, "--producers", "3")
    assert scale.returncode == 0, scale.stdout + scale.stderr
    wait_until(lambda: len(_containers("producer")) == 3, "three producer containers exist",
               180, 2)


    wait_until(lambda: not _state(trainer)["Running"] and _versions(run_id) >= VERSIONS,
               f"the run finishes its {VERSIONS} versions", 900, 5)
    assert _state(trainer)["ExitCode"] == 0, _docker("logs", "--tail", "50", trainer)
    assert _versions(run_id) == VERSIONS  # each version trained once, across the crash

    audit = streamrl("audit", run_id, "--log", compose.HOST_LOG)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    replay = _in_trainer("replay", run_id, "--log", "kafka://kafka:9092")
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert f"{VERSIONS}/{VERSIONS}" in replay.stdout, replay.stdout

    down = streamrl("down", "--run", run_id, "--runs-dir", runs)
    assert down.returncode == 0, down.stderr
    assert not [c for c in _containers("trainer") + _containers("kafka")]

    second = f"{run_id}-again"
    again = streamrl("up", "--build-local", *(["--ca"] if CA else []), "--recipe", RECIPE,
                     "--producers", "1", "--max-versions", "1", "--run", second,
                     "--runs-dir", runs, timeout=900)
    assert again.returncode == 0, again.stdout + again.stderr
    wait_until(lambda: _versions(run_id) == VERSIONS, "the first run's log is found again",
               300, 3)
    inspect = _in_trainer("inspect", run_id, "--log", "kafka://kafka:9092")
    assert inspect.returncode == 0, inspect.stdout + inspect.stderr
    print(f"compose test: images and up in {built_s:.0f} s, whole test "
          f"{time.monotonic() - t0:.0f} s")
