"""`streamrl tail STREAM`: a stream's records, decoded, as a table.

    streamrl tail demo-1.events                 # the last 20 records of every partition
    streamrl tail demo-1.trajectories --from 0  # everything from the start
    streamrl tail demo-1.dlq --follow           # keep printing new dead letters
"""

from __future__ import annotations

import argparse
import asyncio

from rich.console import Console

from streamrl import aio
from streamrl.commands.render import record_rows, records_table
from streamrl.log import Log, Record, open_log
from streamrl.streams import parse_stream


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("stream", help="<run_id>.<kind>, kind one of prompts, trajectories, "
                   "weights, events, dlq")
    p.add_argument("--partition", type=int, default=None, help="one partition (default: all)")
    p.add_argument("--last", type=int, default=20, help="records per partition to show")
    p.add_argument("--from", dest="from_offset", type=int, default=None,
                   help="start at this offset instead of the last N")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new records")


def run(args: argparse.Namespace) -> int:
    parse_stream(args.stream)  # a clear error for a malformed name before touching the log
    return aio.run(_tail(args))


async def _start_offsets(log: Log, args: argparse.Namespace) -> dict[int, int]:
    num = await log.num_partitions(args.stream)
    partitions = range(num) if args.partition is None else [args.partition]
    if args.partition is not None and not 0 <= args.partition < num:
        raise SystemExit(f"{args.stream} has partitions 0..{num - 1}, not {args.partition}")
    if args.from_offset is not None:
        return {p: args.from_offset for p in partitions}
    return {p: max(await log.end_offset(args.stream, p) - args.last, 0) for p in partitions}


async def _tail(args: argparse.Namespace) -> int:
    console = Console()
    async with open_log(args.log) as log:
        offsets = await _start_offsets(log, args)
        records: list[Record] = []
        for p, offset in offsets.items():
            while page := await log.read(args.stream, p, offset, max_records=500):
                records += page
                offset = page[-1].offset + 1
            offsets[p] = offset
        console.print(records_table(f"{args.stream} ({log.url})", records))
        if not args.follow:
            return 0
        await asyncio.gather(
            *(_follow(log, args.stream, p, o, console) for p, o in offsets.items())
        )
    return 0


async def _follow(log: Log, stream: str, partition: int, offset: int, console: Console) -> None:
    async for record in log.follow(stream, partition, offset):
        for row in record_rows(record):
            console.print("  ".join(row))
