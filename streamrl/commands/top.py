"""`streamrl top RUN`: a live terminal view of a run, read from its log as it grows.

    streamrl top arithmetic-20261125-101500                 # refreshes every 2 s; Ctrl-C quits
    streamrl top my-run --log kafka://127.0.0.1:9092 --once  # one frame, then exit (scripts, tests)

Everything comes from the run's streams, so it works for any run the log holds, running or
finished, from any machine: versions/s, step time, reward, the newest evaluation, staleness and
rejections from the events stream; each producer's state, weight loads and tokens/s from its
events and the trajectories it published; the trainer's consumer lag from the log's offsets. MFU
needs the trainer's Prometheus endpoint (`[metrics]`), scraped when the run folder records one.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import urllib.request
from collections import Counter, deque
from pathlib import Path

import msgspec
import pyarrow as pa
import pyarrow.compute as pc
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from streamrl import aio
from streamrl.log import Log, open_log
from streamrl.metrics import recorded_endpoints
from streamrl.schemas import (
    DecodeError,
    EvalResult,
    ProducerJoined,
    ProducerLeft,
    Rejected,
    RunStarted,
    TrainStep,
    WeightVersionLoaded,
    decode_event,
    decode_trajectories,
)
from streamrl.streams import RunStreams, check_run_id

RECENT_STEPS = 10  # versions/s over the newest steps
# streamrl.recipe.context.TRAINER_GROUP, whose module imports torch: `top` starts without it
# (tests/metrics/test_top.py holds the two equal)
TRAINER_GROUP = "trainer"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run id")
    p.add_argument("--once", action="store_true", help="print one frame and exit")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between frames")
    p.add_argument("--window", type=float, default=60.0,
                   help="tokens/s over each producer's newest WINDOW seconds (default 60)")
    p.add_argument("--runs-dir", default=None,
                   help="where the run folders are, if not where RunStarted says (the metrics "
                        "endpoints are recorded in the run's folder)")


def run(args: argparse.Namespace) -> int:
    check_run_id(args.run)
    return aio.run(_top(args))


class ProducerView(msgspec.Struct):
    status: str = "joined"
    where: str = ""
    version: int | None = None  # the weights it loaded last
    load_ms: int | None = None
    num_samples: int = 0
    num_tokens: int = 0
    # (started_at, finished_at, tokens) of the newest samples, in µs, for tokens/s
    recent: deque[tuple[int, int, int]] = msgspec.field(default_factory=deque)


class RunView:
    """What `top` shows, updated incrementally from the log's new records."""

    def __init__(self, run_id: str, window_s: float) -> None:
        self.streams = RunStreams(run_id)
        self.window_us = int(window_s * 1e6)
        self.offsets: dict[str, int] = {"events": 0}  # and "trajectories/<partition>"
        self.max_versions: int | None = None
        self.run_dir: Path | None = None  # as RunStarted records it
        self.steps: deque[TrainStep] = deque(maxlen=RECENT_STEPS)
        self.last_eval: EvalResult | None = None
        self.rejected: Counter[str] = Counter()
        self.producers: dict[str, ProducerView] = {}
        self.lag = 0
        self.num_undecodable = 0

    async def update(self, log: Log) -> None:
        for record in await log.read(self.streams.events, 0, self.offsets["events"],
                                     max_records=100_000, timeout_s=0):
            self.offsets["events"] = record.offset + 1
            try:
                self._on(decode_event(record.value, "events"))
            except DecodeError:
                self.num_undecodable += 1
        trajectories, self.lag = self.streams.trajectories, 0
        for p in range(await log.num_partitions(trajectories)):  # log.trajectory_partitions
            key = f"trajectories/{p}"
            for record in await log.read(trajectories, p, self.offsets.get(key, 0),
                                         max_records=100_000, timeout_s=0):
                self.offsets[key] = record.offset + 1
                try:
                    self._on_samples(decode_trajectories(record.value))
                except DecodeError:
                    self.num_undecodable += 1
            self.lag += (await log.end_offset(trajectories, p)
                         - (await log.committed(TRAINER_GROUP, trajectories, p) or 0))

    def _producer(self, producer_id: str) -> ProducerView:
        return self.producers.setdefault(producer_id, ProducerView())

    def _on(self, event: object) -> None:
        match event:
            case RunStarted(config=config) if isinstance(config, dict):
                self.max_versions = config.get("run_config", {}).get("run", {}).get(
                    "max_versions")
                self.run_dir = Path(config["run_dir"]) if "run_dir" in config else None
            case TrainStep():
                self.steps.append(event)
            case EvalResult():
                self.last_eval = event
            case Rejected(reason_code=code):
                self.rejected[code] += 1
            case ProducerJoined(producer_id=pid, host=host, pid=os_pid):
                view = self._producer(pid)
                view.status, view.where = "running", f"{host}:{os_pid}"
            case ProducerLeft(producer_id=pid, reason=reason):
                self._producer(pid).status = f"left ({reason})" if reason else "left"
            case WeightVersionLoaded(producer_id=pid, version=version, load_ms=load_ms):
                view = self._producer(pid)
                view.version, view.load_ms = version, load_ms

    def _on_samples(self, batch: pa.RecordBatch) -> None:
        tokens = pc.list_value_length(batch.column("response_tokens")).to_pylist()
        started = batch.column("started_at").cast("int64").to_pylist()
        finished = batch.column("finished_at").cast("int64").to_pylist()
        for pid, n, t0, t1 in zip(batch.column("producer_id").to_pylist(), tokens, started,
                                  finished, strict=True):
            view = self._producer(pid)
            view.num_samples += 1
            view.num_tokens += n
            view.recent.append((t0, t1, n))
            newest = max(t for _, t, _ in view.recent)
            while view.recent and view.recent[0][1] <= newest - self.window_us:
                view.recent.popleft()

    def versions_per_s(self) -> float | None:
        if len(self.steps) < 2:
            return None
        first, last = self.steps[0], self.steps[-1]
        span_s = (last.time_ms - first.time_ms) / 1000
        return (last.version - first.version) / span_s if span_s > 0 else None

    def tokens_per_s(self, view: ProducerView) -> float | None:
        """Response tokens of the samples that finished in the newest window, over the window
        (or over the time they took, when that is shorter: a young run)."""
        if not view.recent:
            return None
        newest = max(t for _, t, _ in view.recent)
        span_us = min(self.window_us, newest - min(t for t, _, _ in view.recent))
        return sum(n for _, _, n in view.recent) / (span_us / 1e6) if span_us > 0 else None


def scrape(url: str, timeout_s: float = 0.5) -> dict[str, float]:
    """name -> value at a Prometheus endpoint; empty if it does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            text = response.read().decode()
    except OSError:
        return {}
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name.split("{")[0]] = float(value)
    return values


def _fmt(value: float | None, spec: str = ".3f", unit: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{unit}"


def render(view: RunView, run_id: str, endpoints: dict[str, str],
           trainer_live: dict[str, float]) -> Group:
    """One frame; `trainer_live`: the trainer endpoint's values (empty without one)."""
    last = view.steps[-1] if view.steps else None
    m = last.metrics if last else {}
    version = last.version if last else 0
    finished = view.max_versions is not None and version >= view.max_versions
    trainer = Table(title=f"run {run_id}: version {version}/{view.max_versions or '?'}"
                    + ("  (finished)" if finished else ""), title_justify="left")
    trainer.add_column("trainer")
    trainer.add_column("", justify="right")
    rate = view.versions_per_s()
    trainer.add_row("versions/s", _fmt(rate, ".4f") + (f"  ({60 * rate:.2f}/min)" if rate else ""))
    trainer.add_row("step time", _fmt(m.get("step_ms"), ".0f", " ms"))
    mfu = trainer_live.get("streamrl_trainer_mfu", m.get("mfu"))
    trainer.add_row("MFU", f"{100 * mfu:.1f} %" if mfu is not None
                    else r"- (needs \[metrics] and a known peak)")
    trainer.add_row("batch reward", _fmt(m.get("reward_mean")))
    if view.last_eval is not None:
        e = view.last_eval
        k = e.num_samples
        trainer.add_row(f"eval at v{e.version}",
                        f"mean@{k} {e.mean_reward:.3f}  pass@{k} {e.pass_at.get(k, 0.0):.3f}")
    trainer.add_row("staleness", f"mean {_fmt(m.get('staleness_mean'), '.2f')}  "
                                 f"max {_fmt(m.get('staleness_max'), '.0f')}")
    trainer.add_row("rejected", ", ".join(f"{c} {n}" for c, n in sorted(view.rejected.items()))
                    or "0")
    trainer.add_row("consumer lag", f"{view.lag} records")
    trainer.add_row("weight publish", f"copy {_fmt(m.get('weights_copy_ms'), '.0f', ' ms')}  "
                                      f"digest {_fmt(m.get('weights_digest_ms'), '.0f', ' ms')}")
    producers = Table()
    for name in ("producer", "status", "weights", "sync ms", "samples", "tokens", "tok/s"):
        producers.add_column(name, justify="left" if name in ("producer", "status") else "right")
    where = []
    for pid, p in sorted(view.producers.items()):
        producers.add_row(pid, p.status, _fmt(p.version, "d"), _fmt(p.load_ms, "d"),
                          str(p.num_samples), str(p.num_tokens), _fmt(view.tokens_per_s(p), ".1f"))
        where.append(f"{pid}: {p.where or '?'}" + (f", metrics {endpoints[pid]}"
                                                    if pid in endpoints else ""))
    if "trainer" in endpoints:
        where.append(f"trainer: metrics {endpoints['trainer']}")
    footer = "\n".join([*where, f"updated {time.strftime('%H:%M:%S')}"])
    if view.num_undecodable:
        footer += f"; {view.num_undecodable} undecodable records skipped (streamrl inspect)"
    return Group(trainer, producers, footer)


async def _top(args: argparse.Namespace) -> int:
    console = Console()
    async with open_log(args.log) as log:
        view = RunView(args.run, args.window)
        if view.streams.events not in await log.list_streams(args.run):
            console.print(f"[red]run {args.run!r} has no events stream in {log.url}[/red]")
            return 2
        runs_dir = Path(args.runs_dir) if args.runs_dir is not None else None
        if args.once:
            console.print(await _frame(log, view, runs_dir))
            return 0
        with Live(await _frame(log, view, runs_dir), console=console,
                  auto_refresh=False) as live:
            while True:  # until Ctrl-C
                await asyncio.sleep(args.interval)
                live.update(await _frame(log, view, runs_dir), refresh=True)


async def _frame(log: Log, view: RunView, runs_dir: Path | None) -> Group:
    await view.update(log)
    run_dir = runs_dir / view.streams.run_id if runs_dir is not None else view.run_dir
    endpoints = recorded_endpoints(run_dir) if run_dir is not None else {}
    live = (await asyncio.to_thread(scrape, endpoints["trainer"]) if "trainer" in endpoints
            else {})
    return render(view, view.streams.run_id, endpoints, live)
