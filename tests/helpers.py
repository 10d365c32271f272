"""What many tests share: where the checkout is, the tiny recipe, and real child processes.

Children run from the checkout with it on PYTHONPATH, so the test hooks that recipes name by
import path (`tests.run.tiny_task:reward`, ...) import in them too. Fixtures live in conftest.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "run" / "tiny.toml"  # the recipe most end-to-end tests run


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment plus the checkout on PYTHONPATH and `extra`."""
    return {**os.environ, "PYTHONPATH": str(REPO), **extra}


def cli_env(**extra: str) -> dict[str, str]:
    """`child_env` with wide console output, so no line the tests look for is wrapped."""
    return child_env(COLUMNS="200", **extra)


def streamrl(*args: str, timeout: float = 600, cwd: Path = REPO,
             **env: str) -> subprocess.CompletedProcess[str]:
    """The `streamrl` command as a user runs it, in a child process, output captured as text;
    `env` adds environment variables (e.g. OMP_NUM_THREADS="1")."""
    return subprocess.run([sys.executable, "-m", "streamrl.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=cli_env(**env), cwd=cwd)


def streamrl_here(*args: str) -> tuple[int, str, str]:
    """The `streamrl` command in this process (no interpreter start, no torch import): (exit
    code, stdout, stderr). For the cases that fail fast; real runs use `streamrl` (a process)."""
    from streamrl.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


async def spawn(module: str, *args: str, **env: str) -> asyncio.subprocess.Process:
    """`python -m module args` as an asyncio child process with one OpenMP thread (a run's
    processes share the test machine's cores); `env` adds environment variables."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, *args, env=child_env(OMP_NUM_THREADS="1", **env),
        cwd=REPO)


def wait_until(ok: Callable[[], object], what: str, timeout_s: float = 300.0,
               every_s: float = 1.0) -> None:
    """Call `ok` every `every_s` seconds until it returns something true; fail after
    `timeout_s` with "timed out waiting until {what}"."""
    deadline = time.monotonic() + timeout_s
    while not ok():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(every_s)


async def publish_partition(producer, log) -> None:
    """Start every prompt of partition 0 of the producer's run and step its engine until each
    group is published: a producer's main loop for one partition, without weight updates."""
    from streamrl.producers.resume import PartitionProgress

    await producer.rewards.start()
    try:
        producer.progress[0] = PartitionProgress(0)
        prompts = producer.ctx.streams.prompts
        for record in producer.progress[0].take(await log.read(prompts, 0, 0)):
            producer._start(record)
        await publish_started(producer)
    finally:
        await producer.rewards.close()


async def publish_started(producer) -> None:
    """Step the producer's engine until every group it started is published."""
    while producer.groups:
        producer._raise_failed_rollouts()
        if producer.client.has_work():
            await producer.client.step()
        else:
            await asyncio.sleep(0.01)
