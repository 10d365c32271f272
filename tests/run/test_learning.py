"""The product's promise on the embedded default and on Kafka: `streamrl run` on the CI-sized
arithmetic recipe raises held-out accuracy clearly above the SFT warm start."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from tests.helpers import REPO, streamrl

RECIPE = REPO / "recipes" / "arithmetic" / "recipe_ci.toml"


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shared by both backends, so the warm start (cached under runs/cache) runs once."""
    return tmp_path_factory.mktemp("runs")


@pytest.mark.parametrize("backend", ["file", "kafka"])
def test_the_ci_recipe_learns(backend: str, runs_dir: Path, tmp_path: Path,
                              request: pytest.FixtureRequest) -> None:
    log = str(tmp_path / "log") if backend == "file" else request.getfixturevalue("kafka_url")
    run_id = f"learn-{backend}-{uuid.uuid4().hex[:6]}"
    out = streamrl("run", str(RECIPE), "--log", log, "--run", run_id, "--runs-dir",
                   str(runs_dir), "--max-versions", "30", timeout=900)
    assert out.returncode == 0, out.stderr[-4000:] + out.stdout[-2000:]
    summary = json.loads((runs_dir / run_id / "summary.json").read_text())
    before, after = summary["evals"]["eval before"], summary["evals"]["eval after"]
    # Measured on this recipe: greedy accuracy 0.26 -> 0.83 in 40 versions.
    assert after >= before + 0.15, summary
    rewards = summary["batch_reward"]
    assert len(rewards) == 30
    assert sum(rewards[-10:]) / 10 > sum(rewards[:10]) / 10
