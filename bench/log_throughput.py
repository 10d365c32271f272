"""Log throughput end to end (encode → publish → consume → decode) against raw baselines.

    make bench                                   # sets up, starts the local Kafka broker
    .venv/bin/python -m bench.log_throughput --quick --no-kafka

Rows are realistic: 1k prompt + 2k response tokens with logprobs, without and with the routing of
a 48-layer top-8 MoE (786 KB of uint8 per row). One message is one GRPO group of 8 samples, as
producers publish them. A producer process encodes and appends each message (one durability
wait per message, up to 4 appends in flight) while a consumer process reads and fully decodes
(Arrow validation + semantic checks) concurrently, as in a real run. Baselines, measured in the
same run:
- file log: raw sequential `write` + `fsync` of the same bytes, one fsync per message;
- Kafka: Kafka's own ProducerPerformance at the same record size on the same broker (acks=all,
  idempotence on), which only produces; ours also consumes and decodes;
- encoding: JSON encode + decode of the same rows.
Results go to BENCHMARKS.md, bench/results/log_throughput.json and .png.
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
from datetime import UTC, datetime

import numpy as np
from rich.progress import Progress

from bench.common import (
    Case,
    machine_info,
    plot_ratios,
    producer_performance,
    record_results,
)
from streamrl import aio
from streamrl.log import open_log
from streamrl.schemas import Sample, decode_trajectories, encode_trajectories, samples_to_batch

GROUP = 8  # samples per message: one GRPO group
WINDOW = 4  # appends a producer keeps in flight
VOCAB = 151_936


def make_samples(n: int, moe: bool, seed: int = 0) -> list[Sample]:
    rng = np.random.default_rng(seed)
    now = datetime.now(UTC)
    out = []
    for i in range(n):
        out.append(Sample(
            run_id="bench", sample_id=f"s{i}", group_id=f"g{i // GROUP}",
            prompt_id=f"p{i // GROUP}", sample_index=i % GROUP, producer_id="bench-producer",
            policy_version=3, prompt_tokens=rng.integers(0, VOCAB, size=1024, dtype=np.int32),
            response_tokens=rng.integers(0, VOCAB, size=2048, dtype=np.int32),
            logprobs=-rng.exponential(1.0, size=2048).astype(np.float32),
            loss_mask=np.ones(2048, dtype=bool), reward=float(rng.random()),
            finish_reason="length", seed=i, started_at=now, finished_at=now,
            routed_experts=(rng.integers(0, 128, size=(2048, 48, 8), dtype=np.uint8)
                            if moe else None),
        ))
    return out


def groups(samples: list[Sample]) -> list[list[Sample]]:
    return [samples[i : i + GROUP] for i in range(0, len(samples), GROUP)]


def encode(group: list[Sample]) -> bytes:
    return encode_trajectories(samples_to_batch(group))


def serialization_case(samples: list[Sample]) -> tuple[float, float]:
    """(Arrow encode+decode rows/s, JSON encode+decode rows/s), one group per message."""
    t0 = time.perf_counter()
    for group in groups(samples):
        decode_trajectories(encode(group), vocab_size=VOCAB)
    arrow = len(samples) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for group in groups(samples):
        rows = []
        for s in group:
            row = {f: getattr(s, f) for f in s.__struct_fields__}
            row = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in row.items()}
            row["started_at"] = row["finished_at"] = row["started_at"].isoformat()
            rows.append(row)
        json.loads(json.dumps(rows))
    return arrow, len(samples) / (time.perf_counter() - t0)


def _producer(url: str, stream: str, n: int, moe: bool, start: mp.Event) -> None:
    messages = groups(make_samples(n, moe))  # generated before the clock starts

    async def produce() -> None:
        async with open_log(url, writer_id="bench-producer") as log:
            start.wait()
            # Encode the next group while earlier appends wait for durability, as a producer
            # that does not stall generation on each fsync would; order is kept per partition.
            inflight: collections.deque[asyncio.Task] = collections.deque()
            for group in messages:
                inflight.append(asyncio.create_task(log.append(stream, encode(group))))
                if len(inflight) >= WINDOW:
                    await inflight.popleft()
            await asyncio.gather(*inflight)

    aio.run(produce())


def _consumer(url: str, stream: str, n: int, first: int, start: mp.Event) -> None:
    async def consume() -> None:
        async with open_log(url) as log:
            start.wait()
            offset, seen = first, 0
            while seen < n:
                for rec in await log.read(stream, 0, offset, max_records=16, timeout_s=1.0):
                    seen += decode_trajectories(rec.value, vocab_size=VOCAB).num_rows
                    offset = rec.offset + 1

    aio.run(consume())


def end_to_end(url: str, stream: str, n: int, moe: bool) -> float:
    """Seconds from start until the consumer process has decoded all `n` samples that the
    producer process encoded and published."""
    async def prepare() -> int:
        async with open_log(url) as log:
            await log.ensure_stream(stream, 1)
            return await log.end_offset(stream, 0)

    first = aio.run(prepare())
    ctx = mp.get_context("spawn")
    start = ctx.Event()
    procs = [ctx.Process(target=_producer, args=(url, stream, n, moe, start)),
             ctx.Process(target=_consumer, args=(url, stream, n, first, start))]
    for p in procs:
        p.start()
    time.sleep(8.0)  # both imported, connected and holding their data before the clock starts
    t0 = time.perf_counter()
    start.set()
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise RuntimeError(f"benchmark {p.name} failed with exit code {p.exitcode}")
    return time.perf_counter() - t0


def raw_append_fsync(payloads: list[bytes], directory: str) -> float:
    """Seconds for plain sequential write + fsync of the same bytes, one fsync per message."""
    path = os.path.join(directory, "raw.bin")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        t0 = time.perf_counter()
        for p in payloads:
            os.write(fd, p)
            os.fsync(fd)
        return time.perf_counter() - t0
    finally:
        os.close(fd)
        os.unlink(path)


def run_cases(args: argparse.Namespace, progress: Progress) -> list[Case]:
    cases: list[Case] = []
    kinds = [("dense", False, args.dense_rows), ("moe48x8", True, args.moe_rows)]
    task = progress.add_task("benchmark cases", total=len(kinds) * (3 if args.kafka else 2))
    for name, moe, n in kinds:
        samples = make_samples(n, moe)
        payloads = [encode(g) for g in groups(samples)]
        mb = sum(len(p) for p in payloads) / 1e6
        size = len(payloads[0])
        arrow, js = serialization_case(samples[: max(n // 4, GROUP)])
        cases.append(Case(f"{name}: Arrow vs JSON encode+decode", arrow, js, "rows/s", size))
        progress.advance(task)
        with tempfile.TemporaryDirectory(dir=args.dir) as d:
            # This VM's fsync speed drifts: measure the raw baseline before and after ours.
            raw_before = raw_append_fsync(payloads, d)
            ours_s = end_to_end(f"file://{d}/log", "bench.trajectories", n, moe)
            raw_s = (raw_before + raw_append_fsync(payloads, d)) / 2
        cases.append(Case(f"{name}: file log e2e vs raw append+fsync", mb / ours_s, mb / raw_s,
                          "MB/s", size, rows_per_s=n / ours_s))
        progress.advance(task)
        if args.kafka:
            stream = f"bench{int(time.time())}{name}.trajectories"
            ours_s = end_to_end(f"kafka://{args.kafka}", stream, n, moe)
            base = producer_performance(args.kafka, len(payloads), size)
            cases.append(Case(f"{name}: Kafka e2e vs ProducerPerformance", mb / ours_s, base,
                              "MB/s", size, rows_per_s=n / ours_s))
            progress.advance(task)
    return cases


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kafka", default="127.0.0.1:9092", help="broker; '' to skip Kafka")
    p.add_argument("--no-kafka", dest="kafka", action="store_const", const="")
    p.add_argument("--dense-rows", type=int, default=4000)
    p.add_argument("--moe-rows", type=int, default=320)
    p.add_argument("--quick", action="store_true", help="few rows: a smoke run, not a record")
    p.add_argument("--dir", default=None, help="where the file log goes (default: a temp dir)")
    args = p.parse_args()
    if args.quick:
        args.dense_rows, args.moe_rows = 64, 16
    with Progress() as progress:
        cases = run_cases(args, progress)
    info = machine_info()
    for c in cases:
        print(f"{c.name}: ours {c.ours:,.1f} {c.unit}, baseline {c.baseline:,.1f} {c.unit}, "
              f"ratio {c.ratio:.2f}")
    if not args.quick:
        png = plot_ratios(cases, "log_throughput", goal=0.8)
        record_results("log_throughput", cases, info, png, goal=0.8)


if __name__ == "__main__":
    main()
