"""Trajectory throughput with 1, 2 and 4 partitions (`[log] trajectory_partitions`), end to end:
producer processes encode MoE groups and append them keyed by group id (as producers do), one
consumer process reads every partition the way the trainer does (`TrajectoryReader`) and fully
decodes each record.

    .venv/bin/python -m bench.trajectory_partitions            # file log + local Kafka broker
    .venv/bin/python -m bench.trajectory_partitions --quick --no-kafka
    scripts/kafka.sh cluster 3 && .venv/bin/python -m bench.trajectory_partitions \
        --cluster 127.0.0.1:29092                              # also the 3-broker cluster

Rows are those of bench/log_throughput.py with the routing of a 48-layer top-8 MoE (6.5 MB per
8-row group). Writes its section of BENCHMARKS.md and bench/results/trajectory_partitions.json.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import multiprocessing as mp
import os
import tempfile
import time

from bench.common import RESULTS, machine_info, replace_section
from bench.log_throughput import GROUP, VOCAB, encode, groups, make_samples
from streamrl import aio
from streamrl.log import Append, open_log
from streamrl.schemas import decode_trajectories

WINDOW = 4  # appends each producer keeps in flight


def _producer(url: str, stream: str, index: int, num_rows: int, ready: mp.Queue,
              start: mp.Event) -> None:
    messages = [encode(g) for g in groups(make_samples(num_rows, moe=True, seed=index))]

    async def produce() -> None:
        async with open_log(url, writer_id=f"bench-producer-{index}") as log:
            ready.put(index)
            start.wait()
            inflight: collections.deque[asyncio.Task] = collections.deque()
            for i, value in enumerate(messages):
                key = f"producer{index}-g{i}".encode()  # spread by group id, as producers do
                inflight.append(asyncio.create_task(
                    log.append_many([Append(stream=stream, value=value, key=key)])))
                if len(inflight) >= WINDOW:
                    await inflight.popleft()
            await asyncio.gather(*inflight)

    aio.run(produce())


def _consumer(url: str, stream: str, num_rows: int, ready: mp.Queue, start: mp.Event,
              out: mp.Queue) -> None:
    from streamrl.consumers.trainer.reader import TrajectoryReader  # imports torch: not timed

    async def consume() -> None:
        async with open_log(url) as log:
            reader = TrajectoryReader(log, stream, finite=False, page=16)
            offsets: dict[int, int] = {}
            per_partition: collections.Counter[int] = collections.Counter()
            ready.put("consumer")
            start.wait()
            seen = 0
            while seen < num_rows:
                record = await reader.next(offsets)
                if record is None:
                    continue
                seen += decode_trajectories(record.value, vocab_size=VOCAB).num_rows
                offsets[record.partition] = record.offset + 1
                per_partition[record.partition] += 1
            out.put(dict(per_partition))

    aio.run(consume())


def end_to_end(url: str, stream: str, partitions: int, producers: int,
               rows_per_producer: int) -> tuple[float, dict[int, int]]:
    """Seconds until the consumer decoded every row, and the records it read per partition."""
    async def prepare() -> None:
        async with open_log(url) as log:
            await log.ensure_stream(stream, partitions)

    aio.run(prepare())
    ctx = mp.get_context("spawn")
    start, ready, out = ctx.Event(), ctx.Queue(), ctx.Queue()
    procs = [ctx.Process(target=_producer, args=(url, stream, i, rows_per_producer, ready,
                                                 start))
             for i in range(producers)]
    procs.append(ctx.Process(target=_consumer, args=(url, stream, producers * rows_per_producer,
                                                     ready, start, out)))
    for p in procs:
        p.start()
    for _ in procs:  # every process imported, connected and holding its data
        ready.get(timeout=600)
    time.sleep(0.5)
    t0 = time.perf_counter()
    start.set()
    counts = out.get(timeout=600)
    seconds = time.perf_counter() - t0
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise RuntimeError(f"benchmark {p.name} failed with exit code {p.exitcode}")
    return seconds, counts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kafka", default="127.0.0.1:9092", help="broker; '' to skip Kafka")
    p.add_argument("--no-kafka", dest="kafka", action="store_const", const="")
    p.add_argument("--cluster", default="", help="a replicated cluster's broker (e.g. "
                   "127.0.0.1:29092 from `scripts/kafka.sh cluster 3`) measured as a third backend")
    p.add_argument("--producers", type=int, default=2)
    p.add_argument("--rows", type=int, default=160, help="MoE rows per producer")
    p.add_argument("--quick", action="store_true", help="few rows: a smoke run, not a record")
    args = p.parse_args()
    if args.quick:
        args.rows = 16
    record_mb = len(encode(make_samples(GROUP, moe=True)[:GROUP])) / 1e6
    total_mb = record_mb * args.producers * args.rows / GROUP
    backends = [("file log", None)] + ([("Kafka", f"kafka://{args.kafka}")] if args.kafka else [])
    if args.cluster:
        backends.append(("Kafka, 3-broker cluster (RF 3, min ISR 2)", f"kafka://{args.cluster}"))
    rows = []
    for name, url in backends:
        for n in (1, 2, 4):
            stream = f"bench{int(time.time() * 1000)}p{n}.trajectories"
            with tempfile.TemporaryDirectory() as d:
                seconds, counts = end_to_end(url or f"file://{d}/log", stream, n,
                                             args.producers, args.rows)
            rows.append({"backend": name, "partitions": n, "seconds": seconds,
                         "load_average": os.getloadavg()[0],  # others' work on this machine
                         "mb_per_s": total_mb / seconds,
                         "rows_per_s": args.producers * args.rows / seconds,
                         "records_per_partition": [counts.get(p, 0) for p in range(n)]})
            print(f"{name}, {n} partition(s): {total_mb / seconds:,.1f} MB/s "
                  f"({rows[-1]['rows_per_s']:,.0f} rows/s), records per partition "
                  f"{rows[-1]['records_per_partition']}")
    if args.quick:
        return
    info = machine_info()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "trajectory_partitions.json").write_text(
        json.dumps({"info": info, "record_mb": record_mb, "producers": args.producers,
                    "rows_per_producer": args.rows, "cases": rows}, indent=2) + "\n")
    table = ["| backend | partitions | MB/s | rows/s | records per partition | load average |",
             "|---|---|---|---|---|---|"]
    table += [f"| {r['backend']} | {r['partitions']} | {r['mb_per_s']:,.1f} | "
              f"{r['rows_per_s']:,.0f} | {', '.join(map(str, r['records_per_partition']))} | "
              f"{r['load_average']:.1f} |" for r in rows]
    replace_section("trajectory_partitions", "\n".join([
        f"{info['date']} · {info['machine']} · Python {info['python']} · "
        "`python -m bench.trajectory_partitions`", "",
        f"{args.producers} producer processes × {args.rows} MoE rows (48 layers top-8 routing, "
        f"{record_mb:.1f} MB per 8-row group, keyed by group id) → one consumer process reading "
        "every partition as the trainer does (`TrajectoryReader`) and decoding each record; "
        "clock from start until the consumer has decoded every row. Kafka: the local single "
        "broker" + (", and the three-node loopback cluster (`scripts/kafka.sh cluster 3`, "
                    "acks=all to 2 of 3 replicas) on the same 2 cores" if args.cluster else "")
        + ".", "",
        *table]))


if __name__ == "__main__":
    main()
