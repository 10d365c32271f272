"""`streamrl inspect RUN`: what a run's streams hold, summarized.

    streamrl inspect demo-20261125-101500
    streamrl inspect my-run --log kafka://127.0.0.1:9092
"""

from __future__ import annotations

import argparse
from collections import Counter

import msgspec
import numpy as np
import pyarrow as pa
from rich.console import Console
from rich.table import Table

from streamrl import aio
from streamrl.log import Log, Record, StreamNotFoundError, open_log
from streamrl.records import decode_record
from streamrl.schemas import BatchFormed, DeadLetter, DecodeError, WeightVersionAnnounced
from streamrl.streams import RunStreams, StreamKind, check_run_id


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run id")


def run(args: argparse.Namespace) -> int:
    check_run_id(args.run)
    return aio.run(_inspect(args))


class Decoded(msgspec.Struct):
    events: list[object] = msgspec.field(default_factory=list)
    batches: list[pa.RecordBatch] = msgspec.field(default_factory=list)
    undecodable: list[DecodeError] = msgspec.field(default_factory=list)


def _decode(records: list[Record]) -> Decoded:
    out = Decoded()
    for record in records:
        try:
            item = decode_record(record)
        except DecodeError as error:
            out.undecodable.append(error)
            continue
        (out.batches if isinstance(item, pa.RecordBatch) else out.events).append(item)
    return out


async def _inspect(args: argparse.Namespace) -> int:
    async with open_log(args.log) as log:
        return await summarize(log, args.run, Console())


async def summarize(log: Log, run_id: str, console: Console) -> int:
    """Print the run's overview and details; 1 if the log has no stream of this run."""
    overview = Table(title=f"run {run_id} ({log.url})", title_justify="left")
    for col in ("stream", "partitions", "records", "retention", "oldest offset held"):
        overview.add_column(col, no_wrap=True)
    overview.add_column("content")
    decoded: dict[StreamKind, Decoded] = {}
    for kind, name in RunStreams(run_id).all().items():
        try:
            retention = await log.retention(name)
            records, starts = await read_held(log, name)
        except StreamNotFoundError:
            overview.add_row(kind.value, "-", "-", "-", "-", "[dim]missing[/dim]")
            continue
        decoded[kind] = d = _decode(records)
        lost = any(starts)
        overview.add_row(kind.value, str(len(starts)), str(len(records)),
                         retention if retention == "forever" else f"[yellow]{retention}[/yellow]",
                         _held(starts), ("[red]history deleted[/red], " if lost else "")
                         + _content(kind, d))
    if not decoded:
        console.print(f"[red]no streams for run {run_id!r} in {log.url}[/red]")
        return 1
    console.print(overview)
    for line in _details(decoded):
        console.print(line)
    return 0


async def read_held(log: Log, stream: str) -> tuple[list[Record], list[int]]:
    """Every record the log still holds of `stream`, and each partition's oldest offset held
    (above 0 where retention deleted history)."""
    records: list[Record] = []
    starts = []
    for p in range(await log.num_partitions(stream)):
        offset = await log.start_offset(stream, p)
        starts.append(offset)
        while page := await log.read(stream, p, offset, max_records=1000):
            records += page
            offset = page[-1].offset + 1
    return records, starts


def _held(starts: list[int]) -> str:
    if len(starts) == 1:
        return str(starts[0])
    if not any(starts):
        return "0 (every partition)"
    return ", ".join(f"p{p}: {o}" for p, o in enumerate(starts) if o)


def _content(kind: StreamKind, d: Decoded) -> str:
    bad = f", [red]{len(d.undecodable)} undecodable[/red]" if d.undecodable else ""
    if kind is StreamKind.TRAJECTORIES:
        return f"{sum(b.num_rows for b in d.batches)} samples in {len(d.batches)} batches{bad}"
    types = Counter(type(e).__struct_config__.tag for e in d.events)
    return ", ".join(f"{n} {t}" for t, n in types.most_common()) + bad


def _details(decoded: dict[StreamKind, Decoded]) -> list[str]:
    lines = []
    if (t := decoded.get(StreamKind.TRAJECTORIES)) and t.batches:
        table = pa.Table.from_batches(t.batches)
        rewards = table["reward"].to_numpy()
        versions = table["policy_version"].to_numpy()
        resp = np.array([len(x) for x in table["response_tokens"].to_pylist()])
        lines.append(f"trajectories: {table.num_rows} samples from "
                     f"{len(set(table['producer_id'].to_pylist()))} producers, mean reward "
                     f"{rewards.mean():.3f}, policy versions {versions.min()}..{versions.max()}, "
                     f"{resp.mean():.1f} response tokens/sample")
    if w := decoded.get(StreamKind.WEIGHTS):
        announced = [e for e in w.events if isinstance(e, WeightVersionAnnounced)]
        if announced:
            lines.append(f"weights: versions {announced[0].version}..{announced[-1].version} "
                         f"announced, latest digest {announced[-1].digest[:16]}…")
    if e := decoded.get(StreamKind.EVENTS):
        batches = [x for x in e.events if isinstance(x, BatchFormed)]
        ids = [s for b in batches for s in b.sample_ids]
        twice = len(ids) - len(set(ids))
        lines.append(f"training: {len(batches)} batches formed over {len(set(ids))} samples"
                     + (f", [red]{twice} samples in more than one batch[/red]" if twice else
                        ", each sample in at most one batch"))
    if (q := decoded.get(StreamKind.DLQ)) and q.events:
        reasons = Counter((x.component, x.reason_code) for x in q.events
                          if isinstance(x, DeadLetter))
        lines.append("dead letters: " + ", ".join(
            f"{n} from {c} ({r})" for (c, r), n in reasons.most_common()))
    return lines
