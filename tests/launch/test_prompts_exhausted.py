"""A run whose max_versions is more than its prompts can make ends with "prompts exhausted at
version N" (exit 1) instead of waiting forever (streamrl/launch/exhaustion.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import TINY, streamrl

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_a_run_that_runs_out_of_prompts_ends_saying_so(tmp_path: Path) -> None:
    # 4 prompts x 4 samples = 16 samples: two batches of 8, then nothing more can come.
    text = TINY.read_text().replace("num_prompts = 64", "num_prompts = 4")
    text = text.replace("max_versions = 3", "max_versions = 6")
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(text)
    out = streamrl("run", str(recipe), "--log", str(tmp_path / "log"), "--run", "short",
                   "--runs-dir", str(tmp_path / "runs"), timeout=240)
    assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-2000:]
    said = " ".join((out.stdout + out.stderr).split())
    assert "prompts exhausted at version 2 (max_versions 6)" in said, said[-2000:]
    assert "Traceback" not in said
