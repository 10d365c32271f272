"""A rollout hook that holds chosen prompts, so a test decides which groups finish first.

`held_rollout` (named by import path in a recipe) is the default rollout, except that a prompt
whose id has a file `hold-<prompt_id>` in the folder named by STREAMRL_TEST_HOLD waits there until
the file is removed. Each rollout that starts appends its prompt id to `started`. Waiting is
async, so a held producer still answers SIGTERM, SIGUSR1 and SIGKILL at once.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from streamrl.hooks.rollout import RolloutInput, RolloutSample
from streamrl.producers.rollout import sample_n

HOLD_ENV = "STREAMRL_TEST_HOLD"


async def held_rollout(inp: RolloutInput) -> list[RolloutSample]:
    folder = Path(os.environ[HOLD_ENV])
    with (folder / "started").open("a") as started:
        started.write(inp.prompt_id + "\n")
    while (folder / f"hold-{inp.prompt_id}").exists():  # noqa: ASYNC110 - set by another process
        await asyncio.sleep(0.05)
    return await sample_n(inp)


class Holds:
    """The test's side of `held_rollout`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def hold(self, prompt_id: str) -> None:
        (self.folder / f"hold-{prompt_id}").touch()

    def release(self, prompt_id: str) -> None:
        (self.folder / f"hold-{prompt_id}").unlink(missing_ok=True)

    @property
    def started(self) -> list[str]:
        """Prompt ids in the order their rollouts started, over every producer process."""
        try:
            return (self.folder / "started").read_text().split()
        except FileNotFoundError:
            return []
