"""Planting inconsistencies in a copy of a real run's file log: the copy is a plain directory
copy; records are added with the real Log API (`append_events`, `append_raw`) or a stream is
rewritten record by record through it (`rewrite_events`), so the audit reads exactly what a
faulty component would have left behind."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import msgspec

from streamrl import aio
from streamrl.audit import AuditReport, audit_run
from streamrl.log import Append, Position, open_log
from streamrl.schemas import Event, decode_event, encode_event
from streamrl.streams import parse_stream
from tests import helpers
from tests.helpers import TINY


class RealRun(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str
    log_dir: Path
    runs_dir: Path


def streamrl(*args: str) -> subprocess.CompletedProcess[str]:
    """`tests.helpers.streamrl` with one OpenMP thread in each of the run's processes."""
    return helpers.streamrl(*args, OMP_NUM_THREADS="1")


def start_real_run(log_url: str, runs_dir: Path, run_id: str) -> None:
    out = streamrl("run", str(TINY), "--log", log_url, "--run", run_id, "--runs-dir",
                   str(runs_dir))
    assert out.returncode == 0, out.stderr[-4000:] + out.stdout[-2000:]


def copy_log(run: RealRun, dst: Path) -> Path:
    """A private copy of the run's log directory to plant things in."""
    shutil.copytree(run.log_dir, dst)
    return dst


def audit(log_url: str | Path, run_id: str) -> AuditReport:
    async def go() -> AuditReport:
        async with open_log(str(log_url)) as log:
            return await audit_run(log, run_id)
    return aio.run(go())


def read_events(log_dir: Path, stream: str) -> list[tuple[Position, Event]]:
    async def go() -> list[tuple[Position, Event]]:
        async with open_log(str(log_dir)) as log:
            kind = parse_stream(stream)[1].value
            return [(r.position, decode_event(r.value, kind)) for r in await log.read_all(stream)]
    return aio.run(go())


def append_raw(log_dir: Path, stream: str, values: list[bytes]) -> list[Position]:
    async def go() -> list[Position]:
        async with open_log(str(log_dir)) as log:
            return await log.append_many([Append(stream=stream, value=v) for v in values])
    return aio.run(go())


def append_events(log_dir: Path, stream: str, events: list[Event]) -> list[Position]:
    return append_raw(log_dir, stream, [encode_event(e) for e in events])


def rewrite_events(log_dir: Path, stream: str, edit: Callable[[Event], Event]) -> None:
    """Replace `stream` with its records passed through `edit` (same order, offsets, keys)."""
    async def go() -> None:
        async with open_log(str(log_dir)) as log:
            records = await log.read_all(stream)
            partitions = await log.num_partitions(stream)
        kind = parse_stream(stream)[1].value
        shutil.rmtree(log_dir / stream)
        async with open_log(str(log_dir)) as log:
            await log.ensure_stream(stream, partitions)
            await log.append_many([Append(
                stream=stream, partition=r.partition, key=r.key, headers=r.headers,
                value=encode_event(edit(decode_event(r.value, kind)))) for r in records])
    aio.run(go())


def replace(event: Event, **changes: object) -> Event:
    return msgspec.structs.replace(event, **changes)
