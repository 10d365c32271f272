"""`streamrl plan` on every frontier recipe: it parses, fits on the GPU count its header states,
and is refused, with what overflows, on fewer GPUs or smaller ones; and `streamrl run` refuses
what this repository cannot run yet, before anything is written."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import msgspec
import pytest

from streamrl.cli import main
from streamrl.plan import make_plan, read_shape
from streamrl.plan.memory import kv_bytes_per_token as kv_bytes_per_token_of
from streamrl.recipe.config import ConfigError, RunConfig, load_recipe
from tests.helpers import REPO

RECIPES = sorted((REPO / "recipes" / "frontier").glob("*/recipe.toml"))
NAMES = [r.parent.name for r in RECIPES]


def stated_gpus(recipe: Path) -> int:
    found = re.search(r"^# (\d+) GPUs of 80 GiB", recipe.read_text(), re.MULTILINE)
    assert found, f"{recipe}: the header must state '# N GPUs of 80 GiB'"
    return int(found.group(1))


def plan_cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
             *args: str) -> tuple[int, str]:
    monkeypatch.setenv("COLUMNS", "200")
    code = main(["plan", *args])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_all_five_frontier_recipes_exist() -> None:
    assert NAMES == ["deepseek_v3", "glm45_air", "kimi_k2", "qwen3_235b_a22b", "qwen3_30b_a3b"]


@pytest.mark.parametrize("recipe", RECIPES, ids=NAMES)
def test_recipe_fits_its_stated_gpus_and_not_half(recipe: Path, capsys, monkeypatch) -> None:
    config = msgspec.toml.decode(recipe.read_bytes(), type=RunConfig)
    assert config.trainer.backend == "megatron"
    assert config.rollout.engine_factory == "streamrl.producers.sglang:engine_from_options"
    gpus = stated_gpus(recipe)
    code, out = plan_cli(capsys, monkeypatch, str(recipe), "--gpus", str(gpus),
                         "--gpu-memory", "80GiB")
    assert code == 0, out
    assert f"fits on {gpus} GPUs" in out and "memory per GPU" in out
    code, out = plan_cli(capsys, monkeypatch, str(recipe), "--gpus", str(gpus // 2))
    assert code == 1, out
    assert "does not fit: GPUs" in out


def test_too_little_memory_names_the_overflow(capsys, monkeypatch) -> None:
    recipe = REPO / "recipes" / "frontier" / "qwen3_30b_a3b" / "recipe.toml"
    code, out = plan_cli(capsys, monkeypatch, str(recipe), "--gpus", "24",
                         "--gpu-memory", "40GiB")
    assert code == 1
    trainer = re.search(r"does not fit: trainer needs ([\d.]+) GiB per GPU .*?, ([\d.]+) GiB "
                        r"over the usable 36.0 GiB: largest optimizer", out)
    assert trainer, out
    assert float(trainer.group(1)) - 36.0 == pytest.approx(float(trainer.group(2)), abs=0.11)
    assert "does not fit: engine needs" in out


def test_bad_input_is_exit_2(tmp_path: Path, capsys, monkeypatch) -> None:
    recipe = tmp_path / "recipe.toml"
    shutil.copy(REPO / "recipes" / "frontier" / "glm45_air" / "recipe.toml", recipe)
    code, out = plan_cli(capsys, monkeypatch, str(recipe), "--gpus", "48")
    assert code == 2 and "no config.json" in out and "--config-json" in out
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    code, out = plan_cli(capsys, monkeypatch, str(recipe), "--gpus", "48")
    assert code == 2 and "'gpt2'" in out
    code, out = plan_cli(capsys, monkeypatch, str(recipe), "--gpus", "48", "--gpu-memory",
                         "lots")
    assert code == 2 and "not a size" in out


def test_run_refuses_the_multi_gpu_layout(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"trainer\.megatron sets tensor_parallel=8.*planned"):
        load_recipe(REPO / "recipes" / "frontier" / "deepseek_v3" / "recipe.toml")


def test_run_refuses_an_architecture_the_model_code_lacks(tmp_path: Path) -> None:
    """With one-GPU sizes, a checkpoint of a model_type the model code lacks (here DeepSeek-V3's
    config relabelled as Mixtral) is refused by its model_type at load, naming what runs."""
    source = REPO / "recipes" / "frontier" / "deepseek_v3"
    text = (source / "recipe.toml").read_text()
    text = re.sub(r"(tensor|pipeline|expert)_parallel = \d+", r"\1_parallel = 1", text)
    text = text.replace('path = "models/DeepSeek-V3"', f'path = "{tmp_path / "ckpt"}"')
    (tmp_path / "ckpt").mkdir()
    raw = json.loads((source / "config.json").read_text())
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps({**raw, "model_type": "mixtral"}))
    (tmp_path / "recipe.toml").write_text(text)
    with pytest.raises(ConfigError, match="'mixtral' model, which streamrl's model code "
                                          "does not implement yet"):
        load_recipe(tmp_path / "recipe.toml")


def test_embedded_engine_kv_pool_is_planned_as_configured() -> None:
    """The embedded engine's KV is its paged pool when `kv_blocks` or `kv_memory_fraction` is
    set (not max_batch_size sequences at max_seq_len, the default static-size pool)."""
    raw = json.loads((REPO / "recipes" / "frontier" / "qwen3_30b_a3b" / "config.json").read_text())
    config = msgspec.toml.decode((REPO / "recipes" / "arithmetic" / "recipe.toml").read_bytes(),
                                 type=RunConfig)
    per_token = kv_bytes_per_token_of(read_shape(raw), 1, 4 if config.rollout.engine.dtype
                                      == "float32" else 2)

    def engine_with(**options: object) -> int:
        engine = msgspec.structs.replace(config.rollout.engine, **options)
        rollout = msgspec.structs.replace(config.rollout, engine=engine)
        plan = make_plan(msgspec.structs.replace(config, rollout=rollout), raw, num_gpus=8,
                         gpu_bytes=80 * 2**30)
        return plan.engine

    static = engine_with().kv_cache
    assert static == config.rollout.engine.max_batch_size * config.rollout.engine.max_seq_len \
        * per_token
    assert engine_with(kv_blocks=101, kv_block_size=16).kv_cache == 100 * 16 * per_token
    bf16 = engine_with(kv_memory_fraction=0.5, device="cuda", dtype="bfloat16")
    assert bf16.kv_cache == int(0.5 * (80 * 2**30 - bf16.weights)) > 0


def test_mla_caches_the_latent_and_gqa_splits_heads() -> None:
    deepseek = read_shape(json.loads(
        (REPO / "recipes" / "frontier" / "deepseek_v3" / "config.json").read_text()))
    assert kv_bytes_per_token_of(deepseek, 1) == (512 + 64) * 2 * 61
    assert kv_bytes_per_token_of(deepseek, 8) == (512 + 64) * 2 * 61  # replicated per rank
    qwen = read_shape(json.loads(
        (REPO / "recipes" / "frontier" / "qwen3_30b_a3b" / "config.json").read_text()))
    assert kv_bytes_per_token_of(qwen, 1) == 2 * 4 * 128 * 2 * 48
    assert kv_bytes_per_token_of(qwen, 2) == 2 * 2 * 128 * 2 * 48
    assert kv_bytes_per_token_of(qwen, 8) == 2 * 1 * 128 * 2 * 48  # a kv head per rank at least


def test_more_data_parallel_shards_the_optimizer() -> None:
    recipe = REPO / "recipes" / "frontier" / "qwen3_235b_a22b" / "recipe.toml"
    config = msgspec.toml.decode(recipe.read_bytes(), type=RunConfig)
    raw = json.loads((recipe.parent / "config.json").read_text())
    small = make_plan(config, raw, num_gpus=128, gpu_bytes=80 * 2**30)
    large = make_plan(config, raw, num_gpus=192, gpu_bytes=80 * 2**30)
    assert small.parallel.data == 4 and large.parallel.data == 8
    assert large.trainer.optimizer == pytest.approx(small.trainer.optimizer / 2, rel=0.01)
    assert large.trainer.weights == small.trainer.weights
    assert large.weight_sync_bytes == 2 * large.params.total
