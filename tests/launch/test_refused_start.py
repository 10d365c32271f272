"""A trainer that refuses its configuration (here: its worst step would not fit `memory_limit`)
ends the run at once with its reason; the supervisor does not restart it five times first."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import TINY, streamrl


def test_a_trainer_that_refuses_to_start_is_not_restarted(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(TINY.read_text() + '\n[trainer.compute]\nmemory_limit = "1KiB"\n')
    run = streamrl("run", str(recipe), "--log", str(tmp_path / "log"),
                   "--runs-dir", str(tmp_path / "runs"), timeout=240)
    assert run.returncode == 1, run.stderr[-2000:]
    assert "trainer refused to start" in run.stderr and "memory_limit" in run.stderr
    assert "trainer refused its configuration" in run.stdout  # the run's own last word
    assert "; restarting it" not in run.stderr, run.stderr[-2000:]
    assert "Traceback" not in run.stderr
