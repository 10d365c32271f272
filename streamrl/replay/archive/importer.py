"""`import_run`: an exported run's folder made a run again in a log (file or Kafka) and a runs
directory. Streams are copied with every record at its original offset (`copy.py`), group
positions committed as exported, the run's files copied under `runs_dir/<run_id>/`. Two kinds of
record are rewritten, because they hold paths of the machine the run was made on: RunStarted
(its run folder and initial checkpoint) and weight announcements whose file locator lies in the
old run folder. Everything else is byte for byte the exported record."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from pathlib import Path

import msgspec

from streamrl.log import Committed, Log, Record, StreamPartition, open_log
from streamrl.replay.archive.copy import copy_stream
from streamrl.replay.archive.layout import INIT, LOG, RUN, Manifest
from streamrl.schemas import (
    DecodeError,
    RunStarted,
    WeightVersionAnnounced,
    decode_event,
    encode_event,
)
from streamrl.streams import RunStreams

OnStream = Callable[[str, int], None]
OnRecords = Callable[[int], None]
IMPORTED_INIT = "init"  # the initial checkpoint's folder inside the imported run's folder


async def import_run(folder: Path, log: Log, runs_dir: Path, *,
                     on_stream: OnStream | None = None,
                     on_records: OnRecords | None = None) -> Manifest:
    """Make the run exported to `folder` a run of `log` with its files in `runs_dir`. Refuses a
    run id the log or the runs directory already has, before anything is written."""
    manifest = Manifest.read(folder)
    run_id = manifest.run_id
    streams = RunStreams(run_id)
    if streams.events in await log.list_streams(run_id):
        raise ValueError(f"run {run_id!r} already exists in {log.url}")
    run_dir = _new_run_dir(runs_dir, run_id)
    init = run_dir / IMPORTED_INIT
    await asyncio.to_thread(_copy_files, folder, run_dir, init)
    rewrite = _Rewrite(old_run_dir=manifest.run_dir, run_dir=str(run_dir), init=str(init))
    async with open_log(str(folder / LOG)) as src:
        for info in manifest.streams:
            if on_stream is not None:
                on_stream(info.name, sum(info.end_offsets))
            await copy_stream(src, log, info.name, rewrite=rewrite, on_records=on_records,
                              txn_group=f"{run_id}.import")
    for g in manifest.groups:
        await log.commit(g.group, {StreamPartition(g.stream, g.partition):
                                   Committed(g.offset, g.metadata)})
    return manifest


class _Rewrite:
    """The value a record gets in the imported run (see the module docstring)."""

    def __init__(self, *, old_run_dir: str, run_dir: str, init: str) -> None:
        self.old, self.new, self.init = old_run_dir, run_dir, init

    def __call__(self, record: Record) -> bytes:
        kind = record.stream.rpartition(".")[2]
        if kind == "events" and b"run_started" in record.value:
            event = self._decode(record, "events")
            if isinstance(event, RunStarted) and isinstance(event.config, dict):
                config = {**event.config, "run_dir": self.new, "init_checkpoint": self.init}
                return encode_event(msgspec.structs.replace(event, config=config))
        if kind == "weights" and self.old.encode() in record.value:
            event = self._decode(record, "weights")
            if isinstance(event, WeightVersionAnnounced):
                locator = event.locator.replace(f"file://{self.old}/", f"file://{self.new}/", 1)
                return encode_event(msgspec.structs.replace(event, locator=locator))
        return record.value

    @staticmethod
    def _decode(record: Record, kind: str) -> object:
        try:
            return decode_event(record.value, kind)  # type: ignore[arg-type]
        except DecodeError:
            return None  # copied as it is; the run's readers dead-letter it as before


def _new_run_dir(runs_dir: Path, run_id: str) -> Path:
    run_dir = runs_dir.absolute() / run_id
    if run_dir.exists() and any(run_dir.iterdir()):
        raise ValueError(f"{run_dir} already exists and is not empty")
    return run_dir


def _copy_files(folder: Path, run_dir: Path, init: Path) -> None:
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(folder / RUN, run_dir, dirs_exist_ok=True)
    if (folder / INIT).is_dir():
        shutil.copytree(folder / INIT, init, dirs_exist_ok=True)
