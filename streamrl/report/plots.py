"""The staleness report's figure (one PNG, four panels) and its short printed table."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from streamrl.report.staleness import Distribution, StalenessSummary


def plot_staleness(summary: StalenessSummary, path: Path) -> Path:
    """Lag histograms (per sample, per token), rejections by reason, producer throughput over
    time, and each batch's mean/max lag over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    ax = axes[0][0]
    for offset, (label, dist) in enumerate((("per sample", summary.per_sample),
                                            ("per token", summary.per_token))):
        lags = [int(k) for k in dist.histogram]
        total = max(dist.count, 1)
        ax.bar([lag + (offset - 0.5) * 0.4 for lag in lags],
               [dist.histogram[str(lag)] / total for lag in lags], width=0.4,
               label=f"{label} (n={dist.count}, mean {dist.mean:.2f})")
    ax.set_xticks(sorted({int(k) for d in (summary.per_sample, summary.per_token)
                          for k in d.histogram}))
    ax.set(title="staleness of trained data", xlabel="lag (versions behind the trainer)",
           ylabel="fraction")
    ax.legend()
    ax = axes[0][1]
    reasons = summary.rejected_by_reason | {f"dlq:{k}": v for k, v in
                                            summary.dead_letters_by_reason.items()}
    ax.barh(list(reasons) or ["(none)"], list(reasons.values()) or [0])
    ax.set(title="dropped, requeued and throttled, by reason", xlabel="events")
    ax = axes[1][0]
    tp = summary.throughput
    for producer, counts in tp.rows.items():
        ax.plot(tp.bucket_starts_s, [c / tp.bucket_s for c in counts], label=producer)
    ax.set(title="producer throughput", xlabel="time since the first sample started (s)",
           ylabel="samples / s")
    if tp.rows:
        ax.legend()
    ax = axes[1][1]
    times = [b.time_s for b in summary.batches]
    ax.plot(times, [b.mean_lag for b in summary.batches], marker=".", label="mean")
    ax.plot(times, [b.max_lag for b in summary.batches], marker=".", label="max")
    ax.set(title="version lag per batch", xlabel="batch time (s)", ylabel="lag (versions)")
    ax.legend()
    fig.suptitle(f"staleness of run {summary.run_id} ({summary.policy} "
                 f"{summary.policy_options})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def print_summary(summary: StalenessSummary, console: Console) -> None:
    table = Table(title=f"staleness of run {summary.run_id} ({summary.policy} "
                  f"{summary.policy_options})", title_justify="left")
    for col in ("lag over", "count", "mean", "p50", "p99", "max"):
        table.add_column(col, no_wrap=True)

    def row(label: str, d: Distribution) -> None:
        table.add_row(label, str(d.count), f"{d.mean:.3f}", f"{d.p50:g}", f"{d.p99:g}",
                      str(d.max))
    row("trained samples", summary.per_sample)
    row("trained tokens", summary.per_token)
    console.print(table)
    console.print(f"{summary.num_trained} of {summary.num_generated} generated samples trained "
                  f"in {len(summary.batches)} batches; {summary.num_unused} neither trained nor "
                  f"rejected (unjudged when the run ended)", highlight=False)
    own = f"{summary.run_id}.trajectories"
    if summary.trajectory_streams and summary.trajectory_streams != [own]:
        console.print("generated samples read from " + ", ".join(summary.trajectory_streams)
                      + " (a re-training of recorded samples)", highlight=False)
    if summary.num_carried:
        console.print(f"{summary.num_carried} of them carried over from the parent at the fork "
                      "(not in throughput)", highlight=False)
    rejected = ", ".join(f"{n} {r}" for r, n in summary.rejected_by_reason.items()) or "none"
    console.print(f"rejected: {rejected}", highlight=False)
    if summary.throttled_by_producer:
        console.print("throttled stretches: " + ", ".join(
            f"{p} {n}" for p, n in summary.throttled_by_producer.items()), highlight=False)
    tp = summary.throughput
    span = max(len(tp.bucket_starts_s) * tp.bucket_s, 1e-9)
    console.print("throughput: " + ", ".join(
        f"{p} {n} samples ({n / span:.1f}/s)" for p, n in tp.total.items()), highlight=False)
    if summary.mismatch:
        steps = summary.mismatch
        rejected = [m.rejected_fraction for m in steps if m.rejected_fraction is not None]
        console.print(
            f"train/rollout mismatch over {len(steps)} versions: mean |dlogp| "
            f"{sum(m.abs_logprob for m in steps) / len(steps):.2e} (max "
            f"{max(m.abs_logprob for m in steps):.2e}), KL(rollout||train) "
            f"{sum(m.kl for m in steps) / len(steps):.2e}"
            + (f", corrected {sum(rejected) / len(rejected):.2%} of tokens" if rejected else ""),
            highlight=False)
