"""The progress bar `streamrl export` and `streamrl import` show while they copy streams."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

Callbacks = tuple[Callable[[str, int], None], Callable[[int], None]]


@contextlib.contextmanager
def copy_progress(what: str) -> Iterator[Callbacks]:
    """(on_stream(name, total), on_records(n)) that drive one bar per stream."""
    progress = Progress(TextColumn(f"[bold]{what}"), TextColumn("{task.description}"),
                        BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    current: list[TaskID] = []

    def on_stream(name: str, total: int) -> None:
        current[:] = [progress.add_task(name, total=total)]

    def on_records(n: int) -> None:
        if current:
            progress.advance(current[0], n)

    with progress:
        yield on_stream, on_records
