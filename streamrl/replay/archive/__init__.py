"""A run as a folder: `streamrl export RUN DIR` and `streamrl import DIR` (docs/fault-tolerance.md).

    DIR/manifest.json          what the folder holds (`layout.Manifest`): run id, source log,
                               streams, group positions, the run's original paths
    DIR/log/                   a file log with the run's five streams, every record at its
                               original offset (marker records stand for Kafka's transaction
                               markers) with its original timestamp, and the groups' positions
    DIR/run/                   the run's folder: checkpoints, weight files, plots
    DIR/init/                  the initial checkpoint (version 0's weights)
    DIR/recipe.toml            the recipe file, when it was still there (RunStarted holds the
                               config itself)
    DIR/trajectories.parquet   one row per sample, for pandas/polars/DuckDB without streamrl

Modules: `layout.py` (the folder's names and manifest), `copy.py` (streams from one log to another,
offsets kept), `parquet.py` (the samples table), `export.py`, `importer.py`.
"""

from streamrl.replay.archive.export import export_run
from streamrl.replay.archive.importer import import_run

__all__ = ["export_run", "import_run"]
