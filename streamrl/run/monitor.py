"""Watching a run through its events stream: live progress and metrics, TensorBoard scalars, and
the reward curve as a PNG. The monitor only reads the log, so it can watch any run, anywhere."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import msgspec
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from streamrl.log import Log
from streamrl.run.loggers import ScalarWriter
from streamrl.schemas import EvalResult, Rejected, TrainStep, WeightVersionLoaded, decode_event


class RunStats(msgspec.Struct):
    steps: list[TrainStep] = msgspec.field(default_factory=list)
    rejected: Counter[str] = msgspec.field(default_factory=Counter)
    loads: int = 0
    evals: list[EvalResult] = msgspec.field(default_factory=list)  # [eval] every_versions


class Monitor:
    def __init__(self, log: Log, events_stream: str, max_versions: int, run_dir: Path,
                 writer: ScalarWriter | None = None) -> None:
        """`writer`: where scalars go (streamrl/run/loggers.py: TensorBoard, W&B); default
        TensorBoard alone, under `run_dir`."""
        self.log, self.stream = log, events_stream
        self.offset = 0
        self.stats = RunStats()
        if writer is None:
            from torch.utils.tensorboard import SummaryWriter  # heavy import, only when watching

            writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        self.writer = writer
        self.progress = Progress(
            TextColumn("[bold]trainer versions"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("{task.description}"))
        self.train_text = "waiting for the first batch"
        self.task = self.progress.add_task(self.train_text, total=max_versions)

    async def poll(self, timeout_s: float = 0.5) -> None:
        for record in await self.log.read(self.stream, 0, self.offset, timeout_s=timeout_s):
            self.offset = record.offset + 1
            self._on(decode_event(record.value, "events"))

    def _on(self, event: object) -> None:
        match event:
            case TrainStep(version=version, metrics=metrics):
                self.stats.steps.append(event)
                for name, value in metrics.items():
                    self.writer.add_scalar(f"train/{name}", value, version)
                self.train_text = (f"reward {metrics.get('reward_mean', float('nan')):.3f}  "
                                   f"staleness {metrics.get('staleness_mean', 0):.2f}  "
                                   f"rejected {sum(self.stats.rejected.values())}")
                self.progress.update(self.task, completed=version, description=self._line())
            case EvalResult(version=version):
                self.stats.evals.append(event)
                for name, value in eval_metrics(event).items():
                    self.writer.add_scalar(f"eval/{name}", value, version)
                self.progress.update(self.task, description=self._line())
            case Rejected(reason_code=code):
                self.stats.rejected[code] += 1
            case WeightVersionLoaded():
                self.stats.loads += 1

    def _line(self) -> str:
        """The progress line: the newest step's figures, then the newest evaluation's."""
        if not self.stats.evals:
            return self.train_text
        last = self.stats.evals[-1]
        k = last.num_samples
        return (f"{self.train_text}  eval v{last.version}: mean@{k} {last.mean_reward:.3f} "
                f"pass@{k} {last.pass_at.get(k, float('nan')):.3f}")

    def close(self) -> None:
        self.writer.close()


def eval_metrics(event: EvalResult) -> dict[str, float]:
    """An evaluation's figures by name: mean@k and pass@j for each j recorded."""
    return {f"mean@{event.num_samples}": event.mean_reward,
            **{f"pass@{k}": value for k, value in sorted(event.pass_at.items())}}


def plot_reward(steps: list[TrainStep], path: Path, title: str,
                evals: dict[str, float] | None = None,
                periodic: list[EvalResult] | None = None) -> Path:
    """Mean training reward per weight version, the periodic evaluations' mean@k and pass@k
    at their versions, and the before/after eval figures (if any) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    versions = [s.version for s in steps]
    ax.plot(versions, [s.metrics.get("reward_mean", float("nan")) for s in steps], marker=".",
            label="mean reward of each batch")
    series: dict[str, list[tuple[int, float]]] = {}
    for event in periodic or []:
        for name, value in eval_metrics(event).items():
            series.setdefault(name, []).append((event.version, value))
    for (name, points), marker in zip(series.items(), ("o", "s", "^", "v"), strict=False):
        ax.plot([v for v, _ in points], [y for _, y in points], marker=marker,
                linestyle=":", label=f"eval {name}")
    for (name, value), color in zip((evals or {}).items(), ("tab:gray", "tab:green", "tab:red"),
                                    strict=False):
        ax.axhline(value, linestyle="--", color=color, label=f"{name} = {value:.3f}")
    ax.set_xlabel("weight version")
    ax.set_ylabel("reward")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
