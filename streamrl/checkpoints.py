"""Where a run keeps its checkpoints: the one place that names them, so the trainer that writes
them and the commands, replays and forks that read them agree.

    <run_dir>/checkpoints/v000004/   the trainer's checkpoint of version 4
    <run_dir>/fork-v000002/          a fork's starting state: its parent's learner at version 2

Each folder holds the weights in HF format (`streamrl.models.checkpoint`) and, next to them, the
optimizer state in OPTIMIZER_FILE. Readers that follow the log use the path a `CheckpointSaved`
event recorded; these functions are for the writer and for reading a run's files directly.
"""

from __future__ import annotations

from pathlib import Path

OPTIMIZER_FILE = "optimizer.pt"  # the optimizer state, next to a checkpoint's weights


def checkpoint_dir(run_dir: Path, version: int) -> Path:
    """The folder of the trainer's checkpoint of `version` in the run whose files are in
    `run_dir`."""
    return run_dir / "checkpoints" / f"v{version:06d}"


def fork_start_dir(run_dir: Path, version: int) -> Path:
    """The folder of a fork's starting state, its parent's learner at `version`, in the fork's
    `run_dir`."""
    return run_dir / f"fork-v{version:06d}"
