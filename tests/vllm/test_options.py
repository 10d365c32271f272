"""Choosing vLLM in a recipe: `engine_factory = "vllm"` (the name map in
streamrl/recipe/engine.py) resolves to the adapter's factory; a typo gets the known names, and
bad `engine_options` name the field, before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamrl.producers.vllm import engine_from_options
from streamrl.recipe.config import ConfigError, load_recipe
from tests.helpers import TINY


def recipe(tmp_path: Path, factory: str) -> Path:
    text = TINY.read_text().replace(
        "[rollout]\n", f'[rollout]\nengine_factory = "{factory}"\n'
        'engine_options = { url = "http://127.0.0.1:8000" }\n', 1)
    (tmp_path / "r.toml").write_text(text)
    return tmp_path / "r.toml"


def test_vllm_is_a_known_engine_name(tmp_path: Path) -> None:
    _, hooks = load_recipe(recipe(tmp_path, "vllm"))
    assert hooks.engine_factory is engine_from_options
    with pytest.raises(ConfigError, match="did you mean 'vllm'"):
        load_recipe(recipe(tmp_path, "vlm"))


@pytest.mark.parametrize(("options", "field"), [
    ({"url": "http://x", "pause_mode": "later"}, "pause_mode"),
    ({"url": "http://x", "weight_transfer": "smoke"}, "weight_transfer"),
    ({"url": "http://x", "poll_s": 0}, "poll_s"),
    ({"url": "ftp://x"}, "http://"),
    ({}, "url"),
])
def test_bad_engine_options_name_the_field(tmp_path: Path, options: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        engine_from_options(tmp_path, options)
