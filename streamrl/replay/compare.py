"""Runs side by side, from their logs (and `runs/<id>/summary.json` where the run wrote one):
rewards, evals, samples trained and rejected, staleness, wall time; a table and a PNG.

    summaries = [await summarize_run(log, run_id) for run_id in ("a", "a-sync")]
    console.print(compare_table(summaries)); plot_rewards(summaries, Path("compare.png"))
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import msgspec
from rich.table import Table

from streamrl.log import Log
from streamrl.replay.runs import existing_run
from streamrl.schemas import BatchFormed, Rejected, RunStarted, TrainStep, decode_event


class RunSummary(msgspec.Struct, kw_only=True):
    run_id: str
    parent: str  # "counterfactual of X", "" for a run made by producers
    rewards: list[tuple[int, float]]  # (version, mean batch reward)
    num_samples: int  # samples in BatchFormed events
    rejected: dict[str, int]  # Rejected events by reason code (drops, throttles, requeues)
    staleness_mean: float  # over trained samples
    staleness_max: int
    wall_s: float | None
    evals: dict[str, float]  # from summary.json, e.g. {"eval before": .., "eval after": ..}

    @property
    def num_versions(self) -> int:
        return len(self.rewards)

    @property
    def reward_mean(self) -> float:
        values = [r for _, r in self.rewards]
        return sum(values) / len(values) if values else float("nan")

    @property
    def reward_final(self) -> float:
        """Mean batch reward over the last fifth of the versions (one batch is noisy)."""
        values = [r for _, r in self.rewards][-max(1, len(self.rewards) // 5):]
        return sum(values) / len(values) if values else float("nan")


async def summarize_run(log: Log, run_id: str) -> RunSummary:
    ctx = await existing_run(log, run_id)
    events = [decode_event(r.value, "events") for r in await log.read_all(ctx.streams.events)]
    steps = [e for e in events if isinstance(e, TrainStep)]
    batches = [e for e in events if isinstance(e, BatchFormed)]
    started = next(e for e in events if isinstance(e, RunStarted))
    num = sum(len(b.sample_ids) for b in batches)
    file = _summary_file(ctx.run_dir / "summary.json")
    wall = file.get("wall_s")
    if wall is None and steps:
        wall = (steps[-1].time_ms - started.time_ms) / 1000
    parent = f"{ctx.parent.relation} of {ctx.parent.run_id}" if ctx.parent else ""
    return RunSummary(
        run_id=run_id, parent=parent,
        rewards=[(s.version, s.metrics.get("reward_mean", float("nan"))) for s in steps],
        num_samples=num,
        rejected=dict(Counter(e.reason_code for e in events if isinstance(e, Rejected))),
        staleness_mean=(sum(b.staleness.mean * len(b.sample_ids) for b in batches) / num
                        if num else float("nan")),
        staleness_max=max((b.staleness.max for b in batches), default=0),
        wall_s=wall, evals={k: float(v) for k, v in file.get("evals", {}).items()})


def _summary_file(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def compare_table(runs: list[RunSummary]) -> Table:
    table = Table(title="runs compared", title_justify="left")
    table.add_column("")
    for run in runs:
        table.add_column(run.run_id, justify="right")

    def row(name: str, values: list[str]) -> None:
        table.add_row(name, *values)

    row("derived from", [r.parent or "-" for r in runs])
    row("versions trained", [str(r.num_versions) for r in runs])
    row("final reward (last 1/5)", [f"{r.reward_final:.3f}" for r in runs])
    row("mean reward", [f"{r.reward_mean:.3f}" for r in runs])
    for name in sorted({k for r in runs for k in r.evals}):
        row(name, [f"{r.evals[name]:.3f}" if name in r.evals else "-" for r in runs])
    row("samples trained", [str(r.num_samples) for r in runs])
    for code in sorted({k for r in runs for k in r.rejected}):
        row(f"rejected: {code}", [str(r.rejected.get(code, 0)) for r in runs])
    row("staleness mean", [f"{r.staleness_mean:.2f}" for r in runs])
    row("staleness max", [str(r.staleness_max) for r in runs])
    row("wall time (s)", [f"{r.wall_s:.0f}" if r.wall_s is not None else "-" for r in runs])
    return table


def plot_rewards(runs: list[RunSummary], path: Path) -> Path:
    """Mean batch reward per version, one line per run (eval figures as markers at the end)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    styles = ("-", "--", "-.", ":")
    for i, run in enumerate(runs):  # line styles and widths differ: identical runs stay visible
        versions = [v for v, _ in run.rewards]
        line, = ax.plot(versions, [r for _, r in run.rewards], marker=".",
                        linestyle=styles[i % len(styles)], linewidth=max(2.8 - 0.6 * i, 1.0),
                        label=f"{run.run_id} ({run.parent})" if run.parent else run.run_id)
        if "eval after" in run.evals and versions:
            ax.scatter([versions[-1]], [run.evals["eval after"]], marker="*", s=120,
                       color=line.get_color(), zorder=3)
    ax.set_xlabel("weight version")
    ax.set_ylabel("mean batch reward (★ held-out eval after)")
    ax.set_title("reward per version")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
