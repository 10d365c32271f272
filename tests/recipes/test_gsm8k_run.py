"""The gsm8k recipe end to end, as CI runs it, on the file log and on the local Kafka broker:
`prepare` writes the parquet files, the tokenizer and a (smaller, briefly trained) warm start;
`streamrl run` trains a few versions of recipe.toml on them with the built-in `math` reward;
`streamrl replay` reproduces every version bit-exactly and `streamrl audit` finds nothing
wrong."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from recipes.gsm8k.prepare import prepare
from tests.helpers import REPO, streamrl

VERSIONS = 3


@pytest.fixture(scope="module")
def ci_recipe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """recipe.toml pointed at a freshly prepared small model and train file; CI size: 4 prompts
    x 8 samples per version, without the held-out evaluation (the full run's)."""
    root = tmp_path_factory.mktemp("gsm8k")
    data = prepare(root / "gsm8k", steps=20, hidden_size=32, num_layers=1, num_train=256,
                   progress=False)
    assert (data / "model" / "generation_config.json").is_file()
    recipe = (REPO / "recipes" / "gsm8k" / "recipe.toml").read_text()
    for name in ("model", "train.parquet", "eval.parquet"):
        assert f'"runs/gsm8k/{name}"' in recipe
        recipe = recipe.replace(f'"runs/gsm8k/{name}"', f'"{data / name}"')
    recipe = recipe.replace("batch_size = 128", "batch_size = 32")
    recipe = recipe.replace('evaluate = "recipes.gsm8k.hooks:evaluate"\n', "")
    path = root / "recipe.toml"
    path.write_text(recipe)
    return path


@pytest.mark.slow
@pytest.mark.timeout(600)  # measured 48 s file, 52 s Kafka on 2 cores; ~5 min at load 9
def test_the_gsm8k_recipe_runs_replays_and_audits(ci_recipe: Path, log_url: str,
                                                   tmp_path: Path) -> None:
    run_id = f"gsm8k-ci-{uuid.uuid4().hex[:8]}"  # the broker outlives the test
    out = streamrl("run", str(ci_recipe), "--log", log_url, "--run", run_id, "--runs-dir",
                   str(tmp_path / "runs"), "--max-versions", str(VERSIONS), OMP_NUM_THREADS="1")
    assert out.returncode == 0, out.stderr[-4000:] + out.stdout[-2000:]

    out = streamrl("replay", run_id, "--log", log_url, OMP_NUM_THREADS="1")
    assert out.returncode == 0, out.stderr[-3000:] + out.stdout[-3000:]
    assert f"reproduced {VERSIONS}/{VERSIONS} versions bit-exactly" in out.stdout

    out = streamrl("audit", run_id, "--log", log_url)
    assert out.returncode == 0, out.stderr[-3000:] + out.stdout[-3000:]
