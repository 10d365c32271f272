"""Compose mode: `streamrl up` runs compose/docker-compose.yml (Kafka in KRaft mode, the run's
supervisor and trainer, producers scaled by compose). Every command checks for a Docker engine
first and, without one, says so and points at `--local`."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from streamrl.launch.local import LocalLauncher

COMPOSE_FILE = Path(__file__).resolve().parents[2] / "compose" / "docker-compose.yml"
PROJECT = "streamrl"


class NoDockerEngine(RuntimeError):
    pass


def check_engine() -> None:
    """Raise `NoDockerEngine` saying why, unless `docker info` reaches an engine."""
    if shutil.which("docker") is None:
        raise NoDockerEngine("no `docker` command on PATH")
    try:
        out = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"],
                             capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        raise NoDockerEngine("`docker info` did not answer within 20 s") from None
    if out.returncode != 0 or not out.stdout.strip():
        reason = (out.stderr.strip().splitlines() or ["no server version"])[-1]
        raise NoDockerEngine(f"`docker info` found no Docker engine: {reason}")


def compose(*args: str, env: dict[str, str] | None = None) -> int:
    """`docker compose -p streamrl -f compose/docker-compose.yml ARGS`, output to the terminal."""
    cmd = ["docker", "compose", "-p", PROJECT, "-f", str(COMPOSE_FILE), *args]
    return subprocess.run(cmd, env={**os.environ, **(env or {})}).returncode


HOST_LOG = "kafka://127.0.0.1:19092"  # the compose broker's listener for the host


def compose_env(run_id: str, recipe: str, num_producers: int) -> dict[str, str]:
    """What compose/docker-compose.yml interpolates."""
    return {"STREAMRL_RUN": run_id, "STREAMRL_RECIPE": recipe,
            "STREAMRL_PRODUCERS": str(num_producers)}


class ExternalProducers(LocalLauncher):
    """The trainer container's launcher (`streamrl run --external-producers`): the trainer is a
    local process, producers are compose replicas that compose starts, scales and stops."""

    kind = "compose"

    async def start_producer(self, index: int, num_producers: int) -> None:
        pass

    async def stop_producer(self, index: int) -> None:
        pass
