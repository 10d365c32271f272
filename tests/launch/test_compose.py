"""compose/docker-compose.yml against the Compose specification's JSON schema (vendored from the
docker-compose package, tests/launch/compose_spec/SOURCE.md), plus what the schema cannot say:
KRaft Kafka with a health check, the trainer waiting for a healthy broker, producers scaled by
compose and handing over on stop, volumes for the log and checkpoints, commands the CLI accepts.
And `streamrl up` on a machine without a Docker engine says so and offers `--local`."""

from __future__ import annotations

import copy
import json
import re
import shutil
import struct
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from streamrl.cli import build_parser
from streamrl.launch import compose
from streamrl.producers.__main__ import build_parser as producer_parser
from streamrl.producers.__main__ import replica_index
from tests.helpers import REPO, streamrl

SPEC = json.loads((Path(__file__).parent / "compose_spec" / "compose_spec.json").read_text())
COMPOSE = yaml.safe_load((REPO / "compose" / "docker-compose.yml").read_text())


def _errors(document: dict) -> list[str]:
    validator = jsonschema.Draft201909Validator(SPEC)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(document)]


def test_the_compose_file_follows_the_compose_specification() -> None:
    assert _errors(COMPOSE) == []


@pytest.mark.parametrize(("path", "value"), [
    (("services", "kafka", "healthcheck", "retries"), "thirty"),
    (("services", "trainer", "depends_on", "kafka", "condition"), "service_happy"),
    (("services", "producer", "deploy", "replica"), 2),
])
def test_the_schema_catches_a_broken_compose_file(path: tuple[str, ...], value: object) -> None:
    broken = copy.deepcopy(COMPOSE)
    node = broken
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert _errors(broken), f"the schema accepted {path} = {value!r}"


def test_kafka_runs_in_kraft_mode_from_the_official_image_with_a_health_check() -> None:
    kafka = COMPOSE["services"]["kafka"]
    # the official image by default; a variable names another (scripts/images.sh builds one)
    assert kafka["image"] == "${STREAMRL_KAFKA_IMAGE:-apache/kafka:4.1.1}"
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}  # KRaft
    assert "ZOOKEEPER" not in json.dumps(env).upper()
    assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"  # one broker: txns work
    check = kafka["healthcheck"]
    assert check["test"][0] == "CMD-SHELL" and "kafka-broker-api-versions" in check["test"][1]
    assert any(v.startswith("kafka-data:") for v in kafka["volumes"])


def test_the_trainer_waits_for_a_healthy_broker_and_producers_are_scaled_by_compose() -> None:
    services = COMPOSE["services"]
    trainer, producer = services["trainer"], services["producer"]
    assert trainer["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert producer["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert producer["deploy"]["replicas"] == 1  # `--scale producer=N` overrides it
    assert producer["stop_signal"] == "SIGUSR1"  # a replaced producer hands its partitions over
    assert producer["image"] == trainer["image"] and trainer["build"]["dockerfile"] == (
        "compose/Dockerfile")
    assert (REPO / "compose" / "Dockerfile").exists()
    assert "whl/cpu" in (REPO / "compose" / "Dockerfile").read_text()  # CPU torch
    # checkpoints and published weights on a volume both roles mount at the same path
    for role in (trainer, producer):
        assert "runs:/data/runs" in role["volumes"]
    assert set(COMPOSE["volumes"]) == {"kafka-data", "runs"}


def _interpolate(args: list[str], max_versions: int | None = None) -> list[str]:
    env = compose.compose_env({"run_id": "compose-run", "recipe": "recipes/arithmetic/recipe.toml",
                               "producers": 3, "max_versions": max_versions})
    out = []
    for a in args:
        if m := re.fullmatch(r"\$\{(\w+)(?::?([-?])(.*))?\}", a):  # ${X}, ${X:-d}, ${X:?msg}
            name, kind, default = m.groups()
            a = env[name] if name in env or kind != "-" else default
        out.append(a)
    return out


def test_the_services_commands_are_ones_streamrl_accepts() -> None:
    trainer = _interpolate(COMPOSE["services"]["trainer"]["command"])
    assert trainer[0] == "streamrl"
    args = build_parser(trainer[1:]).parse_args(trainer[1:])
    assert args.external_producers and args.log == "kafka://kafka:9092"
    assert args.run == "compose-run" and args.runs_dir == "/data/runs"
    assert args.max_versions is None  # the recipe's, unless `streamrl up --max-versions N`
    assert args.weights_transport == "file" and args.resume  # shared volume; restart resumes
    capped = _interpolate(COMPOSE["services"]["trainer"]["command"], max_versions=7)
    assert build_parser(capped[1:]).parse_args(capped[1:]).max_versions == 7
    producer = _interpolate(COMPOSE["services"]["producer"]["command"])
    assert producer[:3] == ["python", "-m", "streamrl.producers"]
    args = producer_parser().parse_args(producer[3:])
    assert args.index == "auto" and args.num_producers == 3


def test_a_replica_takes_its_index_from_its_container_name() -> None:
    assert replica_index("streamrl-producer-1.streamrl_default") == 0
    assert replica_index("streamrl_producer_3") == 2
    with pytest.raises(ValueError, match="does not end in a replica number"):
        replica_index("my-laptop")


def _engine() -> bool:
    try:
        compose.check_engine()
    except compose.NoDockerEngine:
        return False
    return True


@pytest.mark.skipif(_engine(), reason="a Docker engine is running: up would start compose")
def test_up_without_a_docker_engine_says_so_and_offers_local(tmp_path: Path) -> None:
    out = streamrl("up", "--producers", "2", "--runs-dir", str(tmp_path / "runs"))
    assert out.returncode == 2
    assert "Docker engine" in out.stdout and "streamrl up --local" in out.stdout, out.stdout
    assert "--producers 2" in out.stdout
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("up.json"))
    if shutil.which("docker"):
        assert subprocess.run(["docker", "info"], capture_output=True).returncode != 0


def test_a_replica_finds_its_name_with_a_ptr_query_to_the_dns_server() -> None:
    from streamrl.producers.replica import parse_ptr_answer, ptr_query

    query = ptr_query("172.19.0.4", qid=4242)
    assert b"\x014\x010\x0219\x03172\x07in-addr\x04arpa\x00" in query
    name = b"".join(bytes([len(p)]) + p for p in (b"streamrl_producer_2", b"streamrl_default"))
    answer = (struct.pack(">HHHHHH", 4242, 0x8180, 1, 1, 0, 0) + query[12:]
              + struct.pack(">HHHIH", 0xC00C, 12, 1, 600, len(name) + 1) + name + b"\0")
    found = parse_ptr_answer(answer, qid=4242)
    assert found == "streamrl_producer_2.streamrl_default" and replica_index(found) == 1
    assert parse_ptr_answer(answer, qid=4243) is None  # not the answer to our query
    nxdomain = struct.pack(">HHHHHH", 4242, 0x8183, 1, 0, 0, 0) + query[12:]
    assert parse_ptr_answer(nxdomain, qid=4242) is None
