"""`export_run`: a run's streams, group positions and files copied into a folder of its own
(the layout is in `streamrl/replay/archive/__init__.py`). Only reads the source log."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from streamrl.log import Log, StreamPartition, open_log
from streamrl.recipe.context import context_from_event
from streamrl.replay.archive.copy import copy_stream
from streamrl.replay.archive.layout import (
    FORMAT,
    INIT,
    LOG,
    PARQUET,
    RECIPE,
    RUN,
    GroupPosition,
    Manifest,
    StreamInfo,
    groups_of,
)
from streamrl.replay.archive.parquet import write_samples
from streamrl.schemas import BatchFormed, DecodeError, RunStarted, decode_event
from streamrl.streams import RunStreams, check_run_id

# (what is being copied, how many records it has) once per stream; then the records copied.
OnStream = Callable[[str, int], None]
OnRecords = Callable[[int], None]


async def export_run(log: Log, run_id: str, folder: Path, *, on_stream: OnStream | None = None,
                     on_records: OnRecords | None = None) -> Manifest:
    """Copy run `run_id` of `log` into `folder` (new, or empty). Raises LookupError for an
    unknown run and `HistoryDeletedError` when the log no longer holds its first records."""
    check_run_id(run_id)
    streams = RunStreams(run_id)
    existing = set(await log.list_streams(run_id))
    if streams.events not in existing:
        raise LookupError(f"run {run_id!r} has no events stream in {log.url} (unknown run id, "
                          "or the wrong --log?)")
    started = await _run_started(log, streams.events)
    ctx = context_from_event(started)
    _new_folder(folder)
    infos, positions = [], []
    async with open_log(str(folder / LOG)) as out:
        for name in streams.all().values():
            if name not in existing:
                continue
            if on_stream is not None:
                total = sum([await log.end_offset(name, p)
                             for p in range(await log.num_partitions(name))])
                on_stream(name, total)
            counts: list[int] = []  # records per page, counted as they are copied

            def copied(n: int, counts: list[int] = counts) -> None:
                counts.append(n)
                if on_records is not None:
                    on_records(n)

            ends = await copy_stream(log, out, name, on_records=copied)
            infos.append(StreamInfo(name=name, num_partitions=len(ends),
                                    num_records=sum(counts), end_offsets=tuple(ends)))
            positions += await _copy_groups(log, out, run_id, name, len(ends))
        num_samples = await _write_parquet(out, streams, folder / PARQUET)
    recipe = await asyncio.to_thread(_copy_files, ctx.run_dir, ctx.init_checkpoint,
                                     started.recipe, folder)
    manifest = Manifest(
        format=FORMAT, run_id=run_id, source_log=log.url, exported_ms=int(time.time() * 1000),
        streams=tuple(infos), groups=tuple(positions), run_dir=str(ctx.run_dir),
        init_checkpoint=str(ctx.init_checkpoint),
        recipe=recipe, num_samples=num_samples)
    manifest.write(folder)
    return manifest


async def _run_started(log: Log, events: str) -> RunStarted:
    for record in await log.read(events, 0, await log.start_offset(events, 0), max_records=16):
        try:
            event = decode_event(record.value, "events")
        except DecodeError:
            continue
        if isinstance(event, RunStarted):
            return event
    raise LookupError(f"{events} has no RunStarted event among its first records")


async def _copy_groups(log: Log, out: Log, run_id: str, stream: str,
                       num_partitions: int) -> list[GroupPosition]:
    positions = []
    for group in groups_of(run_id):
        for p in range(num_partitions):
            committed = await log.committed_with_metadata(group, stream, p)
            if committed is None:
                continue
            await out.commit(group, {StreamPartition(stream, p): committed})
            positions.append(GroupPosition(group=group, stream=stream, partition=p,
                                           offset=committed.offset,
                                           metadata=committed.metadata))
    return positions


async def _write_parquet(out: Log, streams: RunStreams, path: Path) -> int:
    if streams.trajectories not in await out.list_streams(streams.trajectories):
        return 0
    batches = []
    for record in await out.read_all(streams.events):
        if b"batch_formed" in record.value:
            try:
                event = decode_event(record.value, "events")
            except DecodeError:
                continue
            if isinstance(event, BatchFormed):
                batches.append(event)
    records = await out.read_all(streams.trajectories)
    return await asyncio.to_thread(write_samples, records, batches, path)


def _new_folder(folder: Path) -> None:
    if folder.exists() and any(folder.iterdir()):
        raise ValueError(f"{folder} is not empty: export into a new folder")
    folder.mkdir(parents=True, exist_ok=True)


def _copy_files(run_dir: Path, init_checkpoint: Path, recipe: str, folder: Path) -> str | None:
    """The run's folder, its initial checkpoint (which may live elsewhere, e.g. a cache) and
    its recipe file if it is still there; returns the recipe's name in `folder`, if copied."""
    if run_dir.is_dir():
        shutil.copytree(run_dir, folder / RUN, symlinks=False)
    else:
        (folder / RUN).mkdir()
    if init_checkpoint.is_dir():
        shutil.copytree(init_checkpoint, folder / INIT)
    if recipe and Path(recipe).is_file():
        shutil.copyfile(recipe, folder / RECIPE)
        return RECIPE
    return None
