"""A run whose prompts cannot make `run.max_versions` versions ends saying so instead of waiting
forever: refused before it starts when the count alone shows it (streamrl/run/driver.py,
`check_enough_prompts`), ended with "prompts exhausted at version N" (exit 1) when the
trainer's drops (or filtered groups) use the prompts up while it runs
(streamrl/launch/exhaustion.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamrl.log import open_log
from streamrl.recipe.config import load_recipe
from streamrl.run.driver import TooFewPrompts, check_enough_prompts, start_run
from tests.helpers import TINY, streamrl, streamrl_here


def recipe(tmp_path: Path, num_prompts: int, max_versions: int) -> Path:
    text = TINY.read_text().replace("num_prompts = 64", f"num_prompts = {num_prompts}")
    path = tmp_path / "recipe.toml"
    path.write_text(text.replace("max_versions = 3", f"max_versions = {max_versions}"))
    return path


# 4 prompts x 4 samples = 16 samples: two batches of 8, not six.
TOO_FEW = ("prompts exhausted at version 2 of 6 before the run starts: run.max_versions 6 x "
           "trainer.batch_size 8 needs 48 samples, but the run's 4 prompts x "
           "data.samples_per_prompt 4 make 16; give it at least 12 prompts (raise "
           "data.num_prompts), or lower run.max_versions to 2")


async def test_too_few_prompts_for_max_versions_start_no_run(tmp_path: Path) -> None:
    config, hooks = load_recipe(recipe(tmp_path, num_prompts=4, max_versions=6))
    check_enough_prompts(config, 12)  # exactly enough: 12 x 4 = 6 x 8
    with pytest.raises(TooFewPrompts, match="at least 12 prompts"):
        check_enough_prompts(config, 11)
    async with open_log(str(tmp_path / "log")) as log:
        with pytest.raises(TooFewPrompts) as refused:
            await start_run(config, log, "short", tmp_path / "runs", recipe="test", hooks=hooks,
                            check_prompts=True)
        assert str(refused.value) == TOO_FEW
        assert await log.list_streams("short") == []  # nothing of the run was written
    assert not (tmp_path / "runs").exists()  # not even the initial checkpoint


def test_streamrl_run_refuses_too_few_prompts_with_the_numbers(tmp_path: Path) -> None:
    path = recipe(tmp_path, num_prompts=4, max_versions=6)
    code, _, err = streamrl_here("run", str(path), "--log", str(tmp_path / "log"), "--run",
                                 "short", "--runs-dir", str(tmp_path / "runs"))
    assert code == 2
    assert " ".join(err.split()) == f"error: {TOO_FEW}"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_run_whose_drops_use_the_prompts_up_ends_saying_so(tmp_path: Path) -> None:
    # 8 prompts x 4 samples would make 2 batches of 8 twice over, but the trainer drops the
    # groups of all prompts but echo-0..2: one batch, and one kept group left over with dropped
    # groups after it in the log (which still sit past the trainer's committed position).
    path = recipe(tmp_path, num_prompts=8, max_versions=2)
    text = path.read_text().replace('policy = "streamrl.staleness:MaxLag"',
                                    'policy = "tests.run.tiny_task:FirstPromptsOnly"')
    path.write_text(text.replace('options = { max_lag = 1, on_stale = "requeue" }',
                                 "options = { keep = 3 }"))
    out = streamrl("run", str(path), "--log", str(tmp_path / "log"), "--run", "short",
                   "--runs-dir", str(tmp_path / "runs"), timeout=240)
    said = " ".join((out.stdout + out.stderr).split())
    assert out.returncode == 1, said[-2000:]
    assert "prompts exhausted at version 1 (max_versions 2)" in said, said[-2000:]
    assert "Traceback" not in said
