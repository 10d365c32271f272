"""Failures of a replicated Kafka cluster during a real run, and how long recovery takes.

    .venv/bin/python -m bench.kafka_cluster                      # all four scenarios
    .venv/bin/python -m bench.kafka_cluster --only leader_killed two_brokers_down

Starts a private three-node KRaft cluster on loopback (`scripts/kafka.sh cluster 3`: RF 3,
min.insync.replicas 2, no unclean leader election; free ports, a temp data dir; never the shared
broker) and runs the tiny recipe under the local supervisor once per scenario
(tests/faults/cluster.py): kill -9 the trajectories leader; kill -9 the trainer's transaction
coordinator right before a commit; a rolling restart of all three brokers; two brokers down (a
write must block unacknowledged and land once when one returns). After each: `streamrl audit`
passes and every trajectory the trainer's committed position covers was trained exactly once.
Results go to BENCHMARKS.md (section kafka_cluster) and bench/results/kafka_cluster.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import tempfile
import time
import traceback
from pathlib import Path

from bench.common import machine_info, replace_section
from tests.faults.cluster import SCENARIOS, Cluster

ROOT = Path(__file__).resolve().parents[1]
NAME = "kafka_cluster"


async def campaign(names: list[str], work: Path) -> dict:
    cluster = Cluster(work / "cluster")
    results: dict = {"cluster_start_s": cluster.start(), "scenarios": {}}
    try:
        for name in names:
            print(f"{name} ...", flush=True)
            t0 = time.monotonic()
            try:
                (work / name).mkdir(parents=True, exist_ok=True)
                measured = await SCENARIOS[name](cluster, work / name)
                results["scenarios"][name] = {"ok": True, "wall_s": time.monotonic() - t0,
                                              **measured}
            except Exception as exc:  # recorded, and the next scenario still runs
                traceback.print_exc()
                results["scenarios"][name] = {"ok": False, "wall_s": time.monotonic() - t0,
                                              "error": f"{type(exc).__name__}: {exc}"[:500]}
                await cluster.heal()
            print(f"{name}: {results['scenarios'][name]}", flush=True)
        cluster.stop()
        t0 = time.monotonic()
        cluster.start()
        results["cluster_restart_s"] = time.monotonic() - t0
    finally:
        cluster.stop()
    return results


def section(results: dict, info: dict[str, str]) -> str:
    rows = ["| scenario | audit + exactly-once | recovery (s) | run (s) | process restarts |",
            "|---|---|---|---|---|"]
    for name, r in results["scenarios"].items():
        if not r["ok"]:
            rows.append(f"| {name} | **failed**: {r['error'][:200]} | | | |")
            continue
        keys = [k for k in r if k not in ("ok", "wall_s", "run_s", "restarts")]
        recovery = ", ".join(f"{k} {r[k]:.1f}" for k in keys)
        rows.append(f"| {name} | passed | {recovery} | {r['run_s']:.0f} | {r['restarts']:.0f} |")
    return "\n".join([
        f"{info['date']} · {info['machine']} · Python {info['python']} · load average "
        f"{results.get('load_average_1m_at_end', float('nan')):.1f} at the end · "
        f"{results.get('total_s', float('nan')) / 60:.0f} min in all",
        "",
        f"Three KRaft nodes (broker + controller each, 512 MiB heap) on one 2-core machine's "
        f"loopback: started in {results['cluster_start_s']:.0f} s fresh (storage formatted), "
        f"{results.get('cluster_restart_s', float('nan')):.0f} s on existing data. Each scenario "
        "is a real tiny run (`tests/run/tiny.toml`) under the local supervisor; *_failover / "
        "next_* / commit_after_kill / write_acknowledged are from the fault (or the restart) "
        "to the moment named; heal is until every partition's replicas are in sync again.",
        "", *rows, "",
        "`python -m bench.kafka_cluster`; the cheapest scenarios also run in CI "
        "(`tests/faults/test_kafka_cluster.py`, slow). Multi-host clusters are not tested.",
    ])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", nargs="+", choices=sorted(SCENARIOS), default=list(SCENARIOS))
    p.add_argument("--workdir", default=None, help="cluster data and runs (default: a temp dir)")
    args = p.parse_args()
    os.environ["PYTHONPATH"] = str(ROOT)  # the run's processes load the tests' hooks
    # A dead broker makes aiokafka log every reconnect attempt; the results say what matters.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="kafka-cluster-")).absolute()
    info = machine_info()
    t0 = time.monotonic()
    results = asyncio.run(campaign(args.only, work))
    results["total_s"] = time.monotonic() - t0
    results["load_average_1m_at_end"] = os.getloadavg()[0]  # other work on the machine
    out = ROOT / "bench" / "results" / f"{NAME}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"info": info, **results}, indent=2) + "\n")
    replace_section(NAME, section(results, info))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
