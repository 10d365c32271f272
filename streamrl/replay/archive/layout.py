"""The names inside an exported run's folder, and its manifest (`replay/archive/__init__.py`)."""

from __future__ import annotations

from pathlib import Path

import msgspec

from streamrl.recipe.context import PRODUCER_GROUP, TRAINER_GROUP

FORMAT = 1
MANIFEST = "manifest.json"
LOG = "log"
RUN = "run"
INIT = "init"
RECIPE = "recipe.toml"
PARQUET = "trajectories.parquet"


def groups_of(run_id: str) -> tuple[str, ...]:
    """The consumer groups whose positions in a run's streams are part of the run: its trainer's
    and producers', and those a re-reward or counterfactual of it keeps under its id."""
    return (TRAINER_GROUP, PRODUCER_GROUP, f"{run_id}.trainer", f"{run_id}.rereward")


class GroupPosition(msgspec.Struct, frozen=True, kw_only=True):
    group: str
    stream: str
    partition: int
    offset: int
    metadata: str = ""


class StreamInfo(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    num_partitions: int
    num_records: int
    end_offsets: tuple[int, ...]


class Manifest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    format: int
    run_id: str
    source_log: str
    exported_ms: int
    streams: tuple[StreamInfo, ...]
    groups: tuple[GroupPosition, ...]
    run_dir: str  # the run's folder where it was exported from
    init_checkpoint: str  # the initial checkpoint's path there
    recipe: str | None  # RECIPE when the recipe file was copied
    num_samples: int  # rows of PARQUET

    def write(self, folder: Path) -> None:
        (folder / MANIFEST).write_bytes(msgspec.json.format(msgspec.json.encode(self)) + b"\n")

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        path = folder / MANIFEST
        try:
            manifest = msgspec.json.decode(path.read_bytes(), type=cls)
        except FileNotFoundError:
            raise ValueError(f"{folder} is not an exported run: no {MANIFEST} (made by "
                             "`streamrl export RUN DIR`)") from None
        except msgspec.ValidationError as error:
            raise ValueError(f"{path}: not a streamrl export manifest: {error}") from None
        if manifest.format != FORMAT:
            raise ValueError(f"{path}: export format {manifest.format}, this streamrl reads "
                             f"format {FORMAT}")
        return manifest
