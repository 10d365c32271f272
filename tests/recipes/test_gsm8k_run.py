"""The gsm8k recipe end to end on the file log, as CI runs it: `prepare` writes the parquet
files, the tokenizer and a (smaller, briefly trained) warm start; `streamrl run` trains a few
versions of recipe.toml on them with the built-in `math` reward; `streamrl replay` reproduces
every version bit-exactly and `streamrl audit` finds nothing wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from recipes.gsm8k.prepare import prepare
from tests.helpers import REPO, streamrl

VERSIONS = 3


@pytest.mark.slow
@pytest.mark.timeout(600)  # measured 58 s on 2 cores; ~5 min at load average 9
def test_the_gsm8k_recipe_runs_replays_and_audits(tmp_path: Path) -> None:
    data = prepare(tmp_path / "gsm8k", steps=20, hidden_size=32, num_layers=1, num_train=256,
                   progress=False)
    assert (data / "model" / "generation_config.json").is_file()
    recipe = (REPO / "recipes" / "gsm8k" / "recipe.toml").read_text()
    for name in ("model", "train.parquet", "eval.parquet"):
        assert f'"runs/gsm8k/{name}"' in recipe
        recipe = recipe.replace(f'"runs/gsm8k/{name}"', f'"{data / name}"')
    # CI size: 4 prompts x 8 samples per version; the held-out evaluation is the full run's
    recipe = recipe.replace("batch_size = 128", "batch_size = 32")
    recipe = recipe.replace('[eval]\nevaluate = "recipes.gsm8k.hooks:evaluate"\n', "")
    path = tmp_path / "recipe.toml"
    path.write_text(recipe)
    log = str(tmp_path / "log")

    out = streamrl("run", str(path), "--log", log, "--run", "gsm8k-ci", "--runs-dir",
                   str(tmp_path / "runs"), "--max-versions", str(VERSIONS), OMP_NUM_THREADS="1")
    assert out.returncode == 0, out.stderr[-4000:] + out.stdout[-2000:]

    out = streamrl("replay", "gsm8k-ci", "--log", log, OMP_NUM_THREADS="1")
    assert out.returncode == 0, out.stderr[-3000:] + out.stdout[-3000:]
    assert f"reproduced {VERSIONS}/{VERSIONS} versions bit-exactly" in out.stdout

    out = streamrl("audit", "gsm8k-ci", "--log", log)
    assert out.returncode == 0, out.stderr[-3000:] + out.stdout[-3000:]
