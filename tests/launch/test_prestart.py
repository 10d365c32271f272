"""Processes started ahead of their run (`streamrl run` starts them while it checks the recipe):
told nothing, they exit cleanly and leave no trace in the log; ended early, they are gone."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

from streamrl import aio
from streamrl.launch.local import Prestarted
from streamrl.prestart import run_id_from_launcher


def test_the_run_id_is_one_line_and_end_of_file_means_no_run() -> None:
    assert run_id_from_launcher(io.StringIO("tiny-20261208-040000\n")) == "tiny-20261208-040000"
    assert run_id_from_launcher(io.StringIO("")) is None


def test_prestarted_processes_never_told_a_run_exit_cleanly_writing_nothing(
        tmp_path: Path) -> None:
    log = tmp_path / "log"

    async def go() -> list[int | None]:
        started = await Prestarted.start(str(log), 1)
        procs = [started.trainer, *started.producers.values()]
        for proc in procs:  # the launcher gave up: end of file, no SIGTERM
            assert proc is not None and proc.stdin is not None
            proc.stdin.close()
        codes = await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs if p)), 120)
        await started.close()  # idempotent: nothing left
        return list(codes)

    assert aio.run(go()) == [0, 0]
    assert not log.exists()


def test_closing_prestarted_processes_ends_them_at_once(tmp_path: Path) -> None:
    async def go() -> list[int | None]:
        started = await Prestarted.start(str(tmp_path / "log"), 2)
        procs = [started.trainer, *started.producers.values()]
        await asyncio.wait_for(started.close(), 30)
        return [p.returncode for p in procs if p is not None]

    codes = aio.run(go())
    assert len(codes) == 3 and all(code is not None for code in codes)
    assert not (tmp_path / "log").exists()
