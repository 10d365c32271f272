"""Compose mode: `streamrl up` runs compose/docker-compose.yml (Kafka in KRaft mode, the run's
supervisor and trainer, producers scaled by compose). Every command checks for a Docker engine
first and, without one, says so and points at `--local`."""

from __future__ import annotations

import functools
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


@functools.cache
def compose_command() -> tuple[str, ...]:
    """Compose v2 (`docker compose`) where the plugin is installed, else v1 (`docker-compose`,
    Debian's package); both run compose/docker-compose.yml."""
    v2 = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=20)
    if v2.returncode == 0:
        return ("docker", "compose")
    if shutil.which("docker-compose") is not None:
        return ("docker-compose",)
    raise NoDockerEngine("neither `docker compose` (v2 plugin) nor `docker-compose` (v1) is "
                         "installed")


def compose(*args: str, env: dict[str, str] | None = None) -> int:
    """`docker compose -p streamrl -f compose/docker-compose.yml ARGS`, output to the terminal.
    `env`: what the file interpolates (`compose_env`); every call of one run passes the same."""
    cmd = [*compose_command(), "-p", PROJECT, "-f", str(COMPOSE_FILE), *args]
    return subprocess.run(cmd, env={**os.environ, **(env or {})}).returncode


HOST_LOG = "kafka://127.0.0.1:19092"  # the compose broker's listener for the host

# The images scripts/images.sh builds without a registry (`streamrl up --build-local`).
LOCAL_IMAGES = {"STREAMRL_KAFKA_IMAGE": "streamrl/kafka:local", "STREAMRL_IMAGE": "streamrl:local",
                "STREAMRL_BASE_IMAGE": "streamrl/debian:bookworm", "STREAMRL_TORCH_INDEX_URL": ""}
IMAGES_SCRIPT = COMPOSE_FILE.parents[1] / "scripts" / "images.sh"


def compose_env(up: dict) -> dict[str, str]:
    """What compose/docker-compose.yml interpolates, from what `streamrl up` recorded (the run,
    recipe, number of producers, version cap and image variables)."""
    env = {"STREAMRL_RUN": up["run_id"], "STREAMRL_RECIPE": up["recipe"],
           "STREAMRL_PRODUCERS": str(up["producers"])}
    if up.get("max_versions") is not None:
        env["STREAMRL_MAX_VERSIONS"] = str(up["max_versions"])
    return {**env, **up.get("images", {})}


def build_local_images(ca: bool) -> int:
    """scripts/images.sh: the base, Kafka and streamrl images, built without a registry."""
    return subprocess.run([str(IMAGES_SCRIPT), *(["--ca"] if ca else []), "all"]).returncode


class ExternalProducers(LocalLauncher):
    """The trainer container's launcher (`streamrl run --external-producers`): the trainer is a
    local process, producers are compose replicas that compose starts, scales and stops."""

    kind = "compose"

    async def start_producer(self, index: int, num_producers: int) -> None:
        pass

    async def stop_producer(self, index: int) -> None:
        pass
