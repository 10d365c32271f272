"""One real tiny parent run (tests/run/tiny.toml, file log, 4 versions) shared by the fork and
re-reward tests; tests that change a log work on a copy of it."""

from __future__ import annotations

import shutil
from pathlib import Path

import msgspec
import pytest

from tests.helpers import TINY, streamrl

PARENT_VERSIONS = 4
REWARD = 'reward = "tests.run.tiny_task:reward"'
INIT = 'init = "tests.run.tiny_task:init"'


class ParentRun(msgspec.Struct, kw_only=True):
    run_id: str
    log: Path
    runs_dir: Path
    recipe: Path  # tiny.toml with tests/fork/rewards.py's init and reward: it learns

    def copy(self, to: Path) -> ParentRun:
        """A private copy of the log (run files stay shared: they are only read)."""
        shutil.copytree(self.log, to)
        return ParentRun(run_id=self.run_id, log=to, runs_dir=self.runs_dir, recipe=self.recipe)


@pytest.fixture(scope="session")
def parent_run(tmp_path_factory: pytest.TempPathFactory) -> ParentRun:
    root = tmp_path_factory.mktemp("fork-parent")
    recipe = root / "tiny_low_digit.toml"
    text = TINY.read_text()
    assert REWARD in text and INIT in text
    recipe.write_text(text.replace(REWARD, 'reward = "tests.fork.rewards:low_digit"')
                      .replace(INIT, 'init = "tests.fork.rewards:init"'))
    run = ParentRun(run_id="parent", log=root / "log", runs_dir=root / "runs", recipe=recipe)
    out = streamrl("run", str(recipe), "--log", str(run.log), "--run", run.run_id, "--runs-dir",
                   str(run.runs_dir), "--max-versions", str(PARENT_VERSIONS))
    assert out.returncode == 0, out.stderr[-4000:] + out.stdout[-2000:]
    return run
