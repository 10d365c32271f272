"""The kill campaign: a real `streamrl up --local` run killed with kill -9 again and again, and
what the kills cost (issue 21 item 5).

    .venv/bin/python -m bench.kill_campaign                          # file log, then Kafka
    .venv/bin/python -m bench.kill_campaign --logs file --record     # one backend, BENCHMARKS.md
    .venv/bin/python -m bench.kill_campaign --max-versions 100 --kills 8 --seed 1

Per log backend, the recipe (default recipes/arithmetic/recipe.toml, two producers) runs twice
under `streamrl up --local`, one after the other: a baseline without kills, then the same run
with `--kills` kill -9s at seeded random moments: a kill falls when the trainer reaches a
version drawn uniformly from 5-90% of max_versions (moments in seconds bunch up behind a
trainer's restart, when the producers are throttled and hold nothing), each of producer 0,
producer 1 or the trainer (at most 5 per process: the supervisor's
restart limit). The supervisor restarts each victim after 2 s. Right before a producer is
killed its Prometheus endpoint (the recipe gets a `[metrics]` port) gives its groups in flight:
what the kill can lose at most. A trainer's kill can lose at most its uncommitted batch, which
is trained again, never dropped.

Read back from the log once each run has finished: samples generated, the trainer's drops by
reason (stale: `stale_lag`, `group_rejected`, `stale_time`), the stale drops from each kill to
30 s after its victim is back (a producer: its next ProducerJoined; the trainer: its next
TrainStep), capped at the next kill, against what the victim had in flight, and the run's wall
time against the baseline's (the ratio is the figure: the machine is shared, so the load average
is recorded too). Then `streamrl audit` and `streamrl replay` of the killed run. A PNG per
backend (samples and stale drops over time, kills marked) goes to
bench/results/kill_campaign_<backend>.png; `--record` writes bench/results/kill_campaign.json
(merged per backend) and the `kill_campaign` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import msgspec
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bench.common import RESULTS, ROOT, machine_info, replace_section
from streamrl.launch.state import is_ours, processes, up_info
from streamrl.log import open_log
from streamrl.schemas import (
    DecodeError,
    ProducerJoined,
    Rejected,
    TrainStep,
    decode_event,
    decode_trajectories,
)
from streamrl.staleness import GROUP_REJECTED, STALE_LAG, STALE_TIME

NAME = "kill_campaign"
LOGS = {"file": None, "kafka": "kafka://127.0.0.1:9092"}  # file: a folder under --work
STALE = (STALE_LAG, GROUP_REJECTED, STALE_TIME)
TARGETS = ("producer 0", "producer 1", "trainer")
MAX_KILLS_PER_TARGET = 5  # streamrl/launch/local.py MAX_RESTARTS: one more ends the run
WINDOW_AFTER_BACK_S = 30.0
console = Console()


class Kill(msgspec.Struct, kw_only=True):
    target: str
    planned_version: int  # killed once the trainer has made this version (and it runs)
    at_ms: int = 0  # wall clock of the SIGKILL
    pid: int = 0
    groups_in_flight: int | None = None  # scraped right before (producers)
    back_ms: int | None = None  # its ProducerJoined / the trainer's next TrainStep
    version: int = 0  # the trainer's newest version at the kill
    stale_drops: int = 0  # in [at, min(back + window, next kill))
    bound_samples: int = 0  # what it had in flight, in samples
    window_samples: int = 0  # samples generated in the same window
    excess: float = 0.0  # stale_drops less the baseline's stale fraction of window_samples


class RunResult(msgspec.Struct, kw_only=True):
    run_id: str
    rl_s: float  # from the first ProducerJoined to the last TrainStep (the figure)
    wall_s: float  # the supervisor's: first process start to the trainer's exit
    up_to_exit_s: float
    load_before: float
    load_after: float
    samples: int
    drops: dict[str, int]
    stale: int
    versions: int
    # max over v of samples at versions <= v beyond (v + S + 1) * batch_size: with the
    # trainer's drops credited back this counts them too, so it is kept out of the table
    overshoot: int
    kills: list[Kill] = []
    restarts: dict[str, int] = {}
    audit: str = ""
    replay: str = ""
    timeline: dict[str, list] = {}  # for the plot: samples / stale drops per record time


def free_base_port(count: int) -> int:
    """A port p with p .. p + count - 1 all free now (the recipe's [metrics] port)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + count > 65000:
            continue
        try:
            for port in range(base, base + count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError("no free run of ports for the metrics endpoints")


def variant(recipe: Path, out: Path, max_versions: int | None, producers: int) -> Path:
    """The recipe with its producers, versions and a metrics port (in-flight groups)."""
    text = recipe.read_text()
    if max_versions is not None:
        text, n = re.subn(r"(?m)^max_versions = \d+", f"max_versions = {max_versions}", text)
        assert n == 1, "the recipe names run.max_versions once"
    text, n = re.subn(r"(?m)^num_producers = \d+", f"num_producers = {producers}", text)
    assert n == 1, "the recipe names rollout.num_producers once"
    assert "[metrics]" not in text, "the recipe has its own [metrics]: this bench sets the port"
    text += f"\n[metrics]\nport = {free_base_port(producers + 1)}\n"
    out.write_text(text)
    return out


def cli(*args: str, timeout: float | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamrl.cli", *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "160"})


def schedule(rng: random.Random, num_kills: int, max_versions: int) -> list[Kill]:
    """`num_kills` versions in 5-90% of `max_versions`, each with a victim (at most 5 per
    process)."""
    moments = sorted(round(rng.uniform(0.05, 0.9) * max_versions) for _ in range(num_kills))
    counts = dict.fromkeys(TARGETS, 0)
    kills = []
    for moment in moments:
        target = rng.choice([t for t in TARGETS if counts[t] < MAX_KILLS_PER_TARGET])
        counts[target] += 1
        kills.append(Kill(target=target, planned_version=moment))
    return kills


def member(runs_dir: Path, run_id: str, target: str) -> dict | None:
    """The target's entry in processes.json once it runs (a producer: once it joined)."""
    role, _, index = target.partition(" ")
    for m in (processes(runs_dir, run_id) or {}).get("members", []):
        if m["role"] == role and (role == "trainer" or m["index"] == int(index)):
            return m if m["status"] == "running" and is_ours(m.get("pid")) else None
    return None


def groups_in_flight(port: int) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as answer:
            text = answer.read().decode()
    except OSError:
        return None
    m = re.search(r"(?m)^streamrl_producer_groups_in_flight(?:\{[^}]*\})? ([0-9.e+]+)", text)
    return int(float(m.group(1))) if m else None


async def newest_version(log, stream: str, state: dict) -> int:
    """The newest TrainStep version, reading the events stream on from where it stopped."""
    while page := await log.read(stream, 0, state.get("offset", 0), max_records=1000):
        for record in page:
            if b"train_step" in record.value:
                try:
                    event = decode_event(record.value, "events")
                except DecodeError:
                    continue
                if isinstance(event, TrainStep):
                    state["version"] = max(state.get("version", 0), event.version)
        state["offset"] = page[-1].offset + 1
    return state.get("version", 0)


async def run_once(label: str, recipe: Path, log_url: str, runs_dir: Path, run_id: str,
                   kills: list[Kill], metrics_port: int, max_versions: int
                   ) -> tuple[float, float]:
    """`streamrl up --local`, the kills, until the supervisor exits: (seconds from `up` to
    its exit, the load average before)."""
    load_before = os.getloadavg()[0]
    t0 = time.monotonic()
    up = cli("up", "--local", "--recipe", str(recipe), "--log", log_url, "--run", run_id,
             "--runs-dir", str(runs_dir))
    if up.returncode != 0:
        raise RuntimeError(f"streamrl up failed ({up.returncode}):\n{up.stdout}{up.stderr}")
    supervisor = (up_info(runs_dir, run_id) or {})["pid"]
    columns = (TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[note]}"), TimeElapsedColumn())
    state: dict = {}
    pending = list(kills)
    async with open_log(log_url) as log:
        with Progress(*columns, console=console) as bar:
            task = bar.add_task("versions", total=max_versions, note="")
            while is_ours(supervisor):
                version = await newest_version(log, f"{run_id}.events", state)
                done = len(kills) - len(pending)
                bar.update(task, completed=version,
                           note=f"kills {done}/{len(kills)}" if kills else "no kills")
                if pending and version >= pending[0].planned_version:
                    kill = pending[0]
                    m = member(runs_dir, run_id, kill.target)
                    if m is not None:  # else: still restarting from an earlier kill; wait
                        if kill.target != "trainer":
                            index = int(kill.target.split()[1])
                            kill.groups_in_flight = groups_in_flight(metrics_port + 1 + index)
                        if is_ours(m["pid"]):
                            os.kill(m["pid"], signal.SIGKILL)
                            kill.at_ms, kill.pid, kill.version = (int(time.time() * 1000),
                                                                  m["pid"], version)
                            pending.pop(0)
                            bar.console.print(f"{label}: kill -9 {kill.target} (pid {kill.pid}) "
                                              f"at version {version}, "
                                              f"{kill.groups_in_flight} groups in flight")
                await asyncio.sleep(0.25)
    if pending:
        console.print(f"[yellow]{label}: the run ended before {len(pending)} of its kills[/]")
        del kills[len(kills) - len(pending):]
    return time.monotonic() - t0, load_before


async def analyse(log_url: str, run_id: str, kills: list[Kill], batch_size: int,
                  max_staleness: int, samples_per_prompt: int) -> dict:
    """Everything the figures need, from the run's log."""
    async with open_log(log_url) as log:
        events = []
        for record in await log.read_all(f"{run_id}.events"):
            try:
                events.append((record.timestamp_ms, decode_event(record.value, "events")))
            except DecodeError:
                continue
        samples, versions = [], []
        stream = f"{run_id}.trajectories"
        for p in range(await log.num_partitions(stream)):
            for record in await log.read_all(stream, p):
                batch = decode_trajectories(record.value)
                samples.append((record.timestamp_ms, batch.num_rows))
                versions += batch.column("policy_version").to_pylist()
    drops: dict[str, int] = {}
    stale_at, seen = [], set()
    for ts, e in events:
        if isinstance(e, Rejected) and "-s" in e.subject and e.subject not in seen:
            seen.add(e.subject)  # a trainer restarted mid-batch may judge a sample again
            drops[e.reason_code] = drops.get(e.reason_code, 0) + 1
            if e.reason_code in STALE:
                stale_at.append(ts)
    steps = sorted(ts for ts, e in events if isinstance(e, TrainStep))
    joins = sorted((ts, e.producer_id) for ts, e in events if isinstance(e, ProducerJoined))
    for i, kill in enumerate(kills):
        if kill.target == "trainer":
            kill.back_ms = next((ts for ts in steps if ts > kill.at_ms), None)
            kill.bound_samples = batch_size  # its batch: trained again, not dropped
        else:
            producer_id = "producer-" + kill.target.split()[1]
            kill.back_ms = next((ts for ts, pid in joins if ts > kill.at_ms and pid == producer_id),
                                None)
            kill.bound_samples = (kill.groups_in_flight or 0) * samples_per_prompt
        end = (kill.back_ms or kill.at_ms) + WINDOW_AFTER_BACK_S * 1000
        if i + 1 < len(kills):
            end = min(end, kills[i + 1].at_ms)
        kill.stale_drops = sum(kill.at_ms <= ts < end for ts in stale_at)
        kill.window_samples = sum(n for ts, n in samples if kill.at_ms <= ts < end)
    overshoot = max((sum(x <= v for x in versions) - (v + max_staleness + 1) * batch_size
                     for v in set(versions)), default=0)
    first_join = joins[0][0] if joins else 0
    return {"samples": sum(n for _, n in samples), "drops": drops,
            "rl_s": (steps[-1] - first_join) / 1000 if steps and joins else 0.0,
            "stale": sum(drops.get(c, 0) for c in STALE), "versions": len(steps),
            "overshoot": overshoot,
            "timeline": {"samples": samples, "stale": stale_at,
                         "joins": [ts for ts, _ in joins], "start": first_join}}


def audit_and_replay(log_url: str, run_id: str, out: Path) -> tuple[str, str]:
    audit = cli("audit", run_id, "--log", log_url, "--json", str(out / f"{run_id}-audit.json"))
    audited = ("passed" if audit.returncode == 0
               else f"exit {audit.returncode}: {(audit.stdout + audit.stderr)[-300:]}")
    replay = cli("replay", run_id, "--log", log_url)
    m = re.search(r"reproduced (\d+)/(\d+) versions bit-exactly", replay.stdout)
    replayed = (f"{m.group(1)}/{m.group(2)} bit-exact" if replay.returncode == 0 and m
                else f"exit {replay.returncode}: {(replay.stdout + replay.stderr)[-300:]}")
    return audited, replayed


async def campaign(backend: str, args: argparse.Namespace, work: Path) -> dict:
    from streamrl.recipe.config import load_config

    log_url = LOGS[backend] or str(work / "log")
    recipe = variant(args.recipe, work / f"recipe-{backend}.toml", args.max_versions, 2)
    config = load_config(recipe)
    port = config.metrics.port
    stamp = time.strftime("%H%M%S")
    results = {}
    for label, num_kills in (("baseline", 0), ("kills", args.kills)):
        run_id = f"kc-{backend}-{label}-{stamp}"
        rng = random.Random(args.seed)
        kills = (schedule(rng, num_kills, config.run.max_versions) if num_kills else [])
        up_s, load_before = await run_once(
            f"{backend} {label}", recipe, log_url, work / "runs", run_id, kills, port,
            config.run.max_versions)
        summary = json.loads((work / "runs" / run_id / "summary.json").read_text())
        found = await analyse(log_url, run_id, kills, config.trainer.batch_size,
                              config.staleness.options.get("max_staleness", 0),
                              config.data.samples_per_prompt)
        result = RunResult(run_id=run_id, wall_s=summary["wall_s"], up_to_exit_s=up_s,
                           load_before=load_before, load_after=os.getloadavg()[0], kills=kills,
                           **found)
        state = processes(work / "runs", run_id) or {}
        result.restarts = {f"{m['role']} {m.get('index', '')}".strip(): m.get("restarts", 0)
                           for m in state.get("members", [])}
        if num_kills:
            result.audit, result.replay = audit_and_replay(log_url, run_id, work)
        results[label] = result
        console.print(f"{backend} {label}: {result.samples} samples, {result.stale} stale drops, "
                      f"{result.rl_s:.0f} s of RL, audit {result.audit or '-'}, "
                      f"replay {result.replay or '-'}")
    base, killed = results["baseline"], results["kills"]
    for kill in killed.kills:
        kill.excess = kill.stale_drops - base.stale / max(base.samples, 1) * kill.window_samples
    png = plot(backend, base, killed)
    return {"backend": backend, "log": log_url, "recipe": str(args.recipe),
            "max_versions": config.run.max_versions, "seed": args.seed,
            "wall_ratio": killed.rl_s / base.rl_s, "png": str(png.relative_to(ROOT)),
            "baseline": msgspec.to_builtins(base), "kills": msgspec.to_builtins(killed)}


def plot(backend: str, base: RunResult, killed: RunResult) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    RESULTS.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True)
    bin_s = max(2.0, round(max(base.rl_s, killed.rl_s) / 60))
    for ax, (label, r) in zip(axes, (("baseline", base), ("8 kills" if len(killed.kills) == 8
                                                          else f"{len(killed.kills)} kills",
                                                          killed)), strict=True):
        t0 = r.timeline["start"] or min(ts for ts, _ in r.timeline["samples"])
        rel = [(ts - t0) / 1000 for ts, _ in r.timeline["samples"]]
        end = max([*rel, 1.0])
        edges = [i * bin_s for i in range(int(end // bin_s) + 2)]
        ax.hist(rel, bins=edges, weights=[n for _, n in r.timeline["samples"]],
                color="tab:blue", alpha=0.35, label="samples generated")
        ax.hist([(ts - t0) / 1000 for ts in r.timeline["stale"]], bins=edges, color="tab:red",
                label="dropped as stale")
        for k in r.kills:
            ax.axvline((k.at_ms - t0) / 1000, color="black" if k.target == "trainer"
                       else "tab:purple", linestyle="--", linewidth=1)
            ax.text((k.at_ms - t0) / 1000, ax.get_ylim()[1] * 0.92, k.target.replace(
                "producer ", "p"), rotation=90, fontsize=7, va="top")
        for ts in r.timeline["joins"]:
            ax.axvline((ts - t0) / 1000, color="tab:green", linewidth=0.6, alpha=0.6)
        ax.set_ylabel(f"samples per {bin_s:.0f} s")
        ax.set_title(f"{backend} log, {label}: {r.samples:,} samples, {r.stale:,} stale "
                     f"drops, {r.rl_s:.0f} s", fontsize=10)
        ax.legend(loc="upper right", fontsize=8)
    axes[-1].set_xlabel("seconds since the first ProducerJoined (dashed: kill -9; green: "
                        "ProducerJoined)")
    fig.tight_layout()
    path = RESULTS / f"{NAME}_{backend}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def section(results: dict, info: dict[str, str]) -> str:
    lines = [f"{info['date']} · {info['machine']} · Python {info['python']}", "",
             "`python -m bench.kill_campaign`: the recipe under `streamrl up --local` with two "
             "producers, a baseline and then the same run with kill -9s of producers and the "
             "trainer at seeded random versions in 5-90% of the run (the local supervisor "
             "restarts each). Stale drops "
             "per kill: from the kill to 30 s after the victim is back (capped at the next kill); "
             "its bound is what it had in flight (a producer's groups, scraped from its metrics "
             "endpoint right before the kill, × samples per prompt; the trainer's batch). The "
             "machine is shared with other engineers' tests: compare the ratio, not the seconds. "
             "RL time: from the first ProducerJoined to the last TrainStep. Excess: the "
             "window's stale drops less the baseline's stale fraction of the samples generated "
             "in it (the drops the run makes anyway at this load).",
             "", "| log | run | versions | samples generated | dropped as stale | RL time (s) | "
             "load avg | audit | replay |", "|---|---|---|---|---|---|---|---|---|"]
    for backend, r in results.items():
        for label in ("baseline", "kills"):
            x = r[label]
            lines.append(f"| {backend} | {label} ({len(x['kills'])} kills) | {x['versions']} | "
                         f"{x['samples']:,} | {x['stale']:,} ({x['stale'] / x['samples']:.1%}) | "
                         f"{x['rl_s']:.0f} | {x['load_before']:.1f} → {x['load_after']:.1f} | "
                         f"{x['audit'] or '-'} | {x['replay'] or '-'} |")
    lines += ["", "| log | RL time, kills / baseline | stale drops, kills vs baseline | restarts "
              "(`streamrl ps`) |", "|---|---|---|---|"]
    for backend, r in results.items():
        x, b = r["kills"], r["baseline"]
        restarts = ", ".join(f"{who} {n}" for who, n in x["restarts"].items())
        lines.append(f"| {backend} | {r['wall_ratio']:.2f}× | {x['stale']:,} vs {b['stale']:,} | "
                     f"{restarts} |")
    lines += ["", "| log | kill | victim | at version | groups in flight | back after | stale "
              "drops in window | of which excess | bound (samples in flight) |",
              "|---|---|---|---|---|---|---|---|---|"]
    for backend, r in results.items():
        for i, k in enumerate(r["kills"]["kills"], 1):
            flight = "-" if k["groups_in_flight"] is None else k["groups_in_flight"]
            lines.append(f"| {backend} | {i} | {k['target']} | {k['version']} | {flight} | "
                         f"{_seconds(k)} | {k['stale_drops']} | {max(0, k['excess']):.0f} | "
                         f"{k['bound_samples']} |")
    for backend, r in results.items():
        lines += ["", f"![{NAME} {backend}]({r['png']})"]
    return "\n".join(lines)


def _seconds(kill: dict) -> str:
    """How long the victim was gone: to its ProducerJoined, or the trainer's next TrainStep."""
    return "-" if kill["back_ms"] is None else f"{(kill['back_ms'] - kill['at_ms']) / 1000:.0f} s"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--recipe", type=Path, default=ROOT / "recipes/arithmetic/recipe.toml")
    p.add_argument("--max-versions", type=int, default=None, help="override run.max_versions")
    p.add_argument("--kills", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--logs", nargs="+", choices=sorted(LOGS), default=["file", "kafka"])
    p.add_argument("--work", type=Path, default=None,
                   help="run files and the file log (default: a new folder under /tmp)")
    p.add_argument("--record", action="store_true",
                   help="write bench/results/kill_campaign.json and BENCHMARKS.md's section")
    p.add_argument("--rewrite", action="store_true",
                   help="only write BENCHMARKS.md's section again from the stored JSON")
    args = p.parse_args()
    if args.rewrite:
        replace_section(NAME, section(json.loads((RESULTS / f"{NAME}.json").read_text()),
                                      machine_info()))
        return 0
    work = args.work or Path(f"/tmp/kill-campaign-{time.strftime('%Y%m%d-%H%M%S')}")
    for backend in args.logs:
        (work / backend).mkdir(parents=True, exist_ok=True)
    console.print(f"work folder {work}; load average {os.getloadavg()[0]:.1f}")
    results = {b: asyncio.run(campaign(b, args, work / b)) for b in args.logs}
    for backend, r in results.items():
        x = r["kills"]
        over = [k for k in x["kills"] if k["excess"] > k["bound_samples"]]
        console.print(f"[bold]{backend}[/]: wall ratio {r['wall_ratio']:.2f}×, stale drops "
                      f"{x['stale']} vs {r['baseline']['stale']} without kills, kills over their "
                      f"bound: {len(over)}, audit {x['audit']}, replay {x['replay']}; {r['png']}")
    if args.record:
        path = RESULTS / f"{NAME}.json"
        stored = json.loads(path.read_text()) if path.exists() else {}
        for r in results.values():  # the per-record timeline is for the plot only
            for label in ("baseline", "kills"):
                r[label].pop("timeline", None)
        stored.update(results)
        RESULTS.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(stored, indent=2) + "\n")
        replace_section(NAME, section(stored, machine_info()))
        console.print(f"recorded: {path}, BENCHMARKS.md section {NAME}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
