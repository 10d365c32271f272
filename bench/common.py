"""What every benchmark shares: the machine record, ratio plots, and BENCHMARKS.md sections."""

from __future__ import annotations

import glob
import json
import os
import platform
import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import msgspec

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


class Case(msgspec.Struct, kw_only=False):
    name: str
    ours: float
    baseline: float
    unit: str
    record_bytes: int
    rows_per_s: float | None = None

    @property
    def ratio(self) -> float:
        return self.ours / self.baseline


def machine_info() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": f"{cpu}, {os.cpu_count()} cores, {mem_gib:.0f} GiB, {platform.system()}",
        "python": platform.python_version(),
        "card": "none (CPU)",
    }


def kafka_classpath() -> str:
    version = os.environ.get("STREAMRL_KAFKA_VERSION", "4.1.1")
    cache = os.environ.get("STREAMRL_CACHE", str(Path.home() / ".cache" / "streamrl"))
    libs = Path(cache) / "kafka" / version / "libs"
    if not glob.glob(str(libs / "kafka-tools-*.jar")):
        raise SystemExit(f"no kafka-tools jar in {libs}: run scripts/kafka.sh install")
    return f"{libs}/*"


def producer_performance(bootstrap: str, num_records: int, record_size: int) -> float:
    """MB/s of Kafka's own ProducerPerformance (acks=all, idempotent) on a fresh topic."""
    topic = f"bench-perf-{record_size}-{int(datetime.now().timestamp())}"
    cp = kafka_classpath()
    subprocess.run(["java", "-cp", cp, "org.apache.kafka.tools.TopicCommand", "--bootstrap-server",
                    bootstrap, "--create", "--topic", topic, "--partitions", "1",
                    "--config", "max.message.bytes=67108864"], check=True, capture_output=True)
    out = subprocess.run(
        ["java", "-Xmx1g", "-cp", cp, "org.apache.kafka.tools.ProducerPerformance",
         "--topic", topic, "--num-records", str(num_records), "--record-size", str(record_size),
         "--throughput", "-1", "--producer-props", f"bootstrap.servers={bootstrap}", "acks=all",
         "enable.idempotence=true", "max.request.size=67108864", "batch.size=16777216",
         "linger.ms=5", "buffer.memory=268435456"],
        check=True, capture_output=True, text=True).stdout
    # last summary line: "N records sent, R records/sec (X MB/sec), ..."
    m = re.findall(r"records/sec \(([\d.]+) MB/sec\)", out)
    if not m:
        raise RuntimeError(f"could not parse ProducerPerformance output:\n{out}")
    return float(m[-1]) * 2**20 / 1e6  # its "MB" is MiB; ours are 10^6 bytes


def plot_ratios(cases: list[Case], name: str, goal: float) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    RESULTS.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(9, 0.6 * len(cases) + 1.5))
    ratios = [c.ratio for c in cases]
    ax.barh([c.name for c in cases], ratios, color=["tab:green" if r >= goal else "tab:red"
                                                    for r in ratios])
    ax.axvline(goal, color="black", linestyle="--", label=f"goal {goal}×")
    for i, r in enumerate(ratios):
        ax.text(r, i, f" {r:.2f}×", va="center")
    ax.set_xlabel("ours / baseline (higher is better)")
    ax.invert_yaxis()
    ax.legend(loc="lower right")
    fig.tight_layout()
    path = RESULTS / f"{name}.png"
    fig.savefig(path, dpi=110)
    return path


def record_results(name: str, cases: list[Case], info: dict[str, str], png: Path,
                   goal: float) -> None:
    """Write results JSON and replace this benchmark's section of BENCHMARKS.md."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"info": info, "goal_ratio": goal,
               "cases": [msgspec.structs.asdict(c) | {"ratio": c.ratio} for c in cases]}
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = [f"<!-- {name}:start -->", f"## {name}", "",
             f"{info['date']} · {info['machine']} · Python {info['python']} · GPU: {info['card']}",
             "", "| case | record | ours | baseline | ratio | goal |",
             "|---|---|---|---|---|---|"]
    for c in cases:
        ok = "met" if c.ratio >= goal else "**missed**"
        extra = f" ({c.rows_per_s:,.0f} rows/s)" if c.rows_per_s else ""
        lines.append(f"| {c.name} | {c.record_bytes / 1e3:,.0f} KB | {c.ours:,.1f} {c.unit}{extra} "
                     f"| {c.baseline:,.1f} {c.unit} | {c.ratio:.2f}× | ≥ {goal}× {ok} |")
    lines += ["", f"![{name}]({png.relative_to(ROOT)})", f"<!-- {name}:end -->"]
    section = "\n".join(lines)
    path = ROOT / "BENCHMARKS.md"
    header = "# Benchmarks\n\nEach section is written by its script in `bench/`.\n"
    text = path.read_text() if path.exists() else header
    pattern = re.compile(rf"<!-- {name}:start -->.*?<!-- {name}:end -->", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)


def replace_section(name: str, body: str) -> None:
    """Replace (or append) the `name` section of BENCHMARKS.md with a free-form `body`, for
    benchmarks whose results are not one ratio table."""
    section = f"<!-- {name}:start -->\n## {name}\n\n{body}\n<!-- {name}:end -->"
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"<!-- {name}:start -->.*?<!-- {name}:end -->", re.S)
    text = (pattern.sub(lambda _: section, text) if pattern.search(text)
            else text.rstrip() + "\n\n" + section + "\n")
    path.write_text(text)
