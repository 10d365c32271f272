"""Sustained load: several producer processes publish MB-size trajectory groups for minutes while
one consumer decodes them; throughput, event-loop lag, consumer lag and memory over time.

    .venv/bin/python -m bench.load --duration 150          # Kafka (local broker) and file log
    .venv/bin/python -m bench.load --duration 20 --no-kafka --producers 2

Each producer encodes every record with the real codec (Arrow; by default 2 samples of 1k prompt +
2k response tokens with 48-layer top-8 MoE routing, ~1.6 MB) inside its event loop, as
`producers/worker.py` does (`--encode-in-thread` moves it to a thread),
and commits it with `transact`, as producers do. Producers hold back while the consumer is more
than `--max-lag` records behind (what admission control does in a run: producers never run
arbitrarily far ahead of the trainer), so memory and lag must stay bounded however long it runs.
The consumer reads, fully decodes (Arrow validation + semantic checks) and commits its position
every `COMMIT_S` (a trainer commits once per batch; producers' admission waits on that position,
so committing only once a second would cap throughput at `--max-lag` records a second). Every
process runs a 10 ms timer task and records how late it fires: the event-loop
lag (goal: p99 < 50 ms). The main process samples consumer lag (records and bytes behind) and the
RSS of every process each second. Baseline, in the same run: Kafka's own ProducerPerformance at the
same record size on the same broker (it only produces; ours also encodes, consumes and decodes).
Results: BENCHMARKS.md (section `load`), bench/results/load.json and load.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import tempfile
import time
import uuid
from pathlib import Path

import msgspec
import numpy as np
from rich.progress import Progress

from bench.common import RESULTS, ROOT, machine_info, producer_performance, replace_section
from bench.log_throughput import encode, make_samples
from streamrl import aio
from streamrl.log import Append, StreamPartition, open_log
from streamrl.schemas import decode_trajectories

GROUP = "bench-load"
TICK_S = 0.010  # the lag probe's period
COMMIT_S = 0.25  # how often the consumer commits its position
LAG_GOAL_MS = 50.0
RSS_GROWTH_LIMIT_MB = 50.0  # second quarter of the run to the last quarter


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def probe_lag(lags: list[float], stop: asyncio.Event, cpu: list[float] | None = None
                    ) -> None:
    """How late a 10 ms timer fires: the time a blocked event loop makes everyone wait (ms).
    `cpu` gets the CPU time the loop's thread used during each tick: a late tick with as much
    CPU is a callback that ran long; one with little CPU waited for a core (other processes)."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        t, c = loop.time(), time.thread_time()
        await asyncio.sleep(TICK_S)
        lags.append((loop.time() - t - TICK_S) * 1000)
        if cpu is not None:
            cpu.append((time.thread_time() - c) * 1000)


def _producer(url: str, stream: str, index: int, args: dict, out: mp.Queue) -> None:
    samples = make_samples(args["group_samples"], moe=args["moe"], seed=index)
    first = samples[0]

    async def produce() -> None:
        lags: list[float] = []
        cpu: list[float] = []
        stop = asyncio.Event()
        probe = asyncio.create_task(probe_lag(lags, stop, cpu))
        sent, deadline = 0, time.monotonic() + args["duration"]
        async with open_log(url, writer_id=f"{stream}-producer-{index}") as log:
            while time.monotonic() < deadline:
                behind = await log.end_offset(stream, 0) - (await log.committed(GROUP, stream, 0)
                                                             or 0)
                if behind > args["max_lag"]:  # admission: wait for the consumer
                    await asyncio.sleep(0.05)
                    continue
                # A new group each time (a distinct sample id), encoded anew, as in a run.
                samples[0] = msgspec.structs.replace(first, sample_id=f"p{index}-{sent}")
                data = (await asyncio.to_thread(encode, samples) if args["encode_in_thread"]
                        else encode(samples))
                await log.transact(f"{GROUP}-producers", {}, [Append(stream=stream, value=data)])
                sent += 1
        stop.set()
        await probe
        out.put({"role": "producer", "index": index, "sent": sent, "lags": lags, "cpu": cpu})

    aio.run(produce())


def _consumer(url: str, stream: str, args: dict, out: mp.Queue) -> None:
    async def consume() -> None:
        lags: list[float] = []
        cpu: list[float] = []
        stop = asyncio.Event()
        probe = asyncio.create_task(probe_lag(lags, stop, cpu))
        offset, count, nbytes, last_commit = 0, 0, 0, time.monotonic()
        timeline: list[tuple[float, int]] = []  # (t, bytes decoded so far)
        t0 = time.monotonic()
        async with open_log(url) as log:
            while time.monotonic() - t0 < args["duration"] + 5:
                for record in await log.read(stream, 0, offset, max_records=8, timeout_s=0.2):
                    decode_trajectories(record.value)
                    offset, count, nbytes = record.offset + 1, count + 1, nbytes + len(record.value)
                    await asyncio.sleep(0)  # a consumer yields between records
                if time.monotonic() - last_commit >= COMMIT_S:
                    await log.commit(GROUP, {StreamPartition(stream, 0): offset})
                    last_commit = time.monotonic()
                    timeline.append((last_commit - t0, nbytes))
        stop.set()
        await probe
        out.put({"role": "consumer", "count": count, "bytes": nbytes, "lags": lags, "cpu": cpu,
                 "timeline": timeline})

    aio.run(consume())


def run_backend(name: str, url: str, args: argparse.Namespace, progress: Progress) -> dict:
    stream = f"load{uuid.uuid4().hex[:8]}.trajectories"

    async def prepare() -> None:
        async with open_log(url) as log:
            await log.ensure_stream(stream, 1)

    aio.run(prepare())
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()
    opts = {"duration": args.duration, "max_lag": args.max_lag, "moe": not args.dense,
            "group_samples": args.group_samples, "encode_in_thread": args.encode_in_thread}
    procs = [ctx.Process(target=_consumer, args=(url, stream, opts, out))]
    procs += [ctx.Process(target=_producer, args=(url, stream, i, opts, out))
              for i in range(args.producers)]
    for p in procs:
        p.start()
    results: list[dict] = []
    samples = aio.run(sample(url, stream, procs, out, results, args.duration, progress, name))
    for p in procs:
        p.join()
    if url.startswith("kafka://"):  # gigabytes on a broker others use: give the disk back
        aio.run(delete_topic(url.removeprefix("kafka://"), stream))
    return {"samples": samples, "results": results}


async def delete_topic(bootstrap: str, topic: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([topic])
    finally:
        await admin.close()


async def sample(url: str, stream: str, procs: list, out: mp.Queue, results: list[dict],
                 duration: float, progress: Progress, name: str) -> list[dict]:
    """Each second: records/bytes the consumer is behind, and every process's RSS; meanwhile
    collect each process's result (a child cannot exit before its queued result is read)."""
    task = progress.add_task(f"{name}: {duration:.0f} s of load", total=duration)
    rows, t0 = [], time.monotonic()
    size = None
    async with open_log(url) as log:
        while len(results) < len(procs):
            await asyncio.sleep(1.0)
            while not out.empty():
                results.append(out.get())
            if time.monotonic() - t0 > duration + 180:
                raise RuntimeError(f"{len(procs) - len(results)} processes never reported")
            t = time.monotonic() - t0
            end = await log.end_offset(stream, 0)
            done = await log.committed(GROUP, stream, 0) or 0
            if size is None and end:
                size = len((await log.read(stream, 0, 0, max_records=1))[0].value)
            rss = [rss_mb(p.pid) for p in procs if p.is_alive()]
            rows.append({"t": t, "behind": end - done, "load": os.getloadavg()[0],
                         "behind_mb": (end - done) * (size or 0) / 1e6,
                         "rss_mb": rss, "size": size or 0})
            progress.update(task, completed=min(t, duration))
    return rows


def summarize(name: str, run: dict, duration: float) -> dict:
    consumer = next(r for r in run["results"] if r["role"] == "consumer")
    producers = [r for r in run["results"] if r["role"] == "producer"]
    plags = np.concatenate([r["lags"] for r in producers])
    # The part of each tick's lag the loop's own thread spent computing (see probe_lag).
    pbusy = np.concatenate([np.minimum(r["lags"][:len(r["cpu"])], r["cpu"]) for r in producers])
    cbusy = np.minimum(consumer["lags"][:len(consumer["cpu"])], consumer["cpu"])
    rss = [max(s["rss_mb"], default=0) for s in run["samples"]]
    quarter = max(1, len(rss) // 4)
    return {
        "backend": name, "mb_per_s": consumer["bytes"] / 1e6 / duration,
        "groups": consumer["count"], "record_mb": run["samples"][-1]["size"] / 1e6,
        "producer_lag_p99_ms": float(np.percentile(plags, 99)),
        "producer_lag_max_ms": float(plags.max()),
        "consumer_lag_p99_ms": float(np.percentile(consumer["lags"], 99)),
        "consumer_lag_max_ms": float(np.max(consumer["lags"])),
        "producer_busy_p99_ms": float(np.percentile(pbusy, 99)),
        "consumer_busy_p99_ms": float(np.percentile(cbusy, 99)),
        "max_behind": max(s["behind"] for s in run["samples"]),
        "max_behind_mb": max(s["behind_mb"] for s in run["samples"]),
        "rss_max_mb": max(rss), "rss_growth_mb": float(np.mean(rss[-quarter:])
                                                        - np.mean(rss[quarter:2 * quarter])),
        "load_avg": float(np.mean([s["load"] for s in run["samples"]])),
        "timeline": consumer["timeline"], "samples": run["samples"],
        "producer_lags": [float(np.percentile(r["lags"], 99)) for r in producers],
    }


def plot(summaries: list[dict]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 7))
    for s in summaries:
        tl = np.array(s["timeline"] or [(0, 0)])
        axes[0, 0].plot(tl[1:, 0], np.diff(tl[:, 1]) / np.diff(tl[:, 0]) / 1e6,
                        label=s["backend"])
        t = [x["t"] for x in s["samples"]]
        axes[0, 1].plot(t, [x["behind"] for x in s["samples"]], label=s["backend"])
        axes[1, 1].plot(t, [max(x["rss_mb"], default=0) for x in s["samples"]],
                        label=f"{s['backend']} (largest process)")
    names = [s["backend"] for s in summaries]
    x = np.arange(len(names))
    axes[1, 0].bar(x - 0.2, [s["producer_lag_p99_ms"] for s in summaries], 0.4,
                   label="producers p99")
    axes[1, 0].bar(x + 0.2, [s["consumer_lag_p99_ms"] for s in summaries], 0.4,
                   label="consumer p99")
    axes[1, 0].axhline(LAG_GOAL_MS, color="black", linestyle="--", label="goal 50 ms")
    axes[1, 0].set_xticks(x, names)
    titles = ["decoded MB/s (consumer, per second)", "consumer lag (records behind)",
              "event-loop lag p99 (ms)", "RSS (MB)"]
    for ax, title in zip(axes.flat, titles, strict=True):
        ax.set_title(title)
        ax.legend(fontsize=8)
    for ax in (axes[0, 0], axes[0, 1], axes[1, 1]):
        ax.set_xlabel("s")
    fig.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "load.png"
    fig.savefig(path, dpi=110)
    return path


def baseline(args: argparse.Namespace, record_bytes: int) -> float:
    """MB/s of Kafka's ProducerPerformance at our record size (enough records for ~10 s)."""
    return producer_performance(args.kafka, max(20, int(10 * 60e6 / record_bytes)), record_bytes)


def section(summaries: list[dict], base: float | None, info: dict, png: Path,
            args: argparse.Namespace) -> str:
    lines = [f"{info['date']} · {info['machine']} · Python {info['python']} · GPU: "
             f"{info['card']} · `python -m bench.load --duration {args.duration:.0f} "
             f"--producers {args.producers}`", "",
             f"{args.producers} producer processes + 1 consumer, {args.duration:.0f} s per "
             f"backend, admission at {args.max_lag} records behind. Event-loop lag is how late a "
             "10 ms timer fires; the loop's own compute is the part of it the loop's thread spent "
             "computing (CPU time during the tick), the rest is waiting for a core. Load average "
             "during each backend's run: "
             + ", ".join(f"{s['backend']} {s['load_avg']:.1f}" for s in summaries)
             + f" ({info['machine'].split(',')[1].strip()}).", "",
             "| backend | record | decoded MB/s | vs ProducerPerformance | loop lag p99 producers "
             "/ consumer (max) | goal p99 < 50 ms | loop's own compute p99 | consumer lag max "
             "| RSS max / growth |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        ratio = (f"{s['mb_per_s'] / base:.2f}× of {base:.1f} MB/s"
                 if base and s["backend"] == "kafka" else "—")
        ok = ("met" if max(s["producer_lag_p99_ms"], s["consumer_lag_p99_ms"]) < LAG_GOAL_MS
              else "**missed**")
        lines.append(
            f"| {s['backend']} | {s['record_mb']:.2f} MB | {s['mb_per_s']:.1f} "
            f"({s['groups']} groups) | {ratio} | {s['producer_lag_p99_ms']:.0f} / "
            f"{s['consumer_lag_p99_ms']:.0f} ms ({s['producer_lag_max_ms']:.0f} / "
            f"{s['consumer_lag_max_ms']:.0f}) | {ok} | {s['producer_busy_p99_ms']:.0f} / "
            f"{s['consumer_busy_p99_ms']:.0f} ms | {s['max_behind']} records "
            f"({s['max_behind_mb']:.0f} MB) | {s['rss_max_mb']:.0f} MB / "
            f"{s['rss_growth_mb']:+.0f} MB |")
    lines += ["", f"![load]({png.relative_to(ROOT)})"]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, default=150.0, help="seconds of load per backend")
    p.add_argument("--producers", type=int, default=3)
    p.add_argument("--max-lag", type=int, default=32, help="records producers may run ahead")
    p.add_argument("--group-samples", type=int, default=2,
                   help="samples per published record (2 with MoE routing: ~1.6 MB)")
    p.add_argument("--dense", action="store_true", help="no MoE routing (~30 KB per sample)")
    p.add_argument("--encode-in-thread", action="store_true",
                   help="encode off the event loop (producers/worker.py encodes on it)")
    p.add_argument("--kafka", default="127.0.0.1:9092")
    p.add_argument("--no-kafka", action="store_true")
    p.add_argument("--no-file", action="store_true")
    p.add_argument("--no-record", action="store_true", help="do not write BENCHMARKS.md")
    args = p.parse_args()
    summaries = []
    with Progress() as progress, tempfile.TemporaryDirectory() as tmp:
        backends = [] if args.no_kafka else [("kafka", f"kafka://{args.kafka}")]
        if not args.no_file:
            backends.append(("file", os.path.join(tmp, "log")))
        for name, url in backends:
            summaries.append(summarize(name, run_backend(name, url, args, progress),
                                       args.duration))
    base = (None if args.no_kafka
            else baseline(args, int(summaries[0]["record_mb"] * 1e6)))
    png = plot(summaries)
    info = machine_info()
    for s in summaries:
        print(f"{s['backend']}: {s['mb_per_s']:.1f} MB/s, loop lag p99 producers "
              f"{s['producer_lag_p99_ms']:.1f} ms / consumer {s['consumer_lag_p99_ms']:.1f} ms "
              f"(the loop's own compute: {s['producer_busy_p99_ms']:.1f} / "
              f"{s['consumer_busy_p99_ms']:.1f} ms), "
              f"max behind {s['max_behind']} records, RSS max {s['rss_max_mb']:.0f} MB "
              f"(growth {s['rss_growth_mb']:+.0f} MB)")
    if base:
        print(f"ProducerPerformance baseline: {base:.1f} MB/s")
    (RESULTS / "load.json").write_text(json.dumps(
        {"info": info, "args": vars(args), "baseline_mb_per_s": base,
         "backends": summaries}, indent=1) + "\n")
    if not args.no_record:
        replace_section("load", section(summaries, base, info, png, args))
    # Bounded: memory must not grow with time once warm (a leak shows up over minutes).
    grew = [s["backend"] for s in summaries if s["rss_growth_mb"] > RSS_GROWTH_LIMIT_MB]
    if grew:
        raise SystemExit(f"RSS grew more than {RSS_GROWTH_LIMIT_MB} MB under load: {grew}")


if __name__ == "__main__":
    main()
