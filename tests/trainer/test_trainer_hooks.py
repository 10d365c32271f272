"""The trainer's hook paths resolve once, with the recipe's other hooks: the defaults resolve,
and every kind of typo says what is wrong, at load."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from streamrl.consumers.trainer import decoupled_ppo, grpo, ppo_tis
from streamrl.hooks import ResolveError, resolve
from streamrl.recipe.config import ConfigError, RunConfig, load_config
from streamrl.recipe.hooks import resolve_hooks
from streamrl.recipe.trainer import DEFAULT_ADVANTAGE, BatchConfig

RECIPE = Path(__file__).parents[2] / "recipes" / "arithmetic" / "recipe_ci.toml"


def with_algorithm(**algorithm: object) -> RunConfig:
    data = msgspec.to_builtins(load_config(RECIPE))
    data["trainer"]["algorithm"] = algorithm
    return msgspec.convert(data, RunConfig)


def test_defaults_resolve_to_grpo_and_decoupled_ppo() -> None:
    hooks = resolve_hooks(with_algorithm())
    assert hooks.advantage is grpo
    assert hooks.loss is decoupled_ppo
    assert resolve("streamrl.recipe.trainer:BatchConfig.__post_init__") is (
        BatchConfig.__post_init__)
    config = with_algorithm(loss="streamrl.consumers.trainer.losses:ppo_tis",
                            loss_config={"clip_high": 0.28})
    assert config.trainer.algorithm.loss_config.clip_high == 0.28
    assert config.trainer.algorithm.advantage == DEFAULT_ADVANTAGE
    assert resolve_hooks(config).loss is ppo_tis


@pytest.mark.parametrize(("path", "message"), [
    ("streamrl.consumers.trainer.advantages.grpo", "is not an import path"),
    ("streamrl.consumers.trainer.advantages:grpoo",
     "advantage 'streamrl.consumers.trainer.advantages:grpoo': module "
     "'streamrl.consumers.trainer.advantages' "
     "has no attribute 'grpoo'"),
    ("streamrl.consumers.trainr.advantages:grpo", "no module named streamrl.consumers.trainr"),
    ("streamrl.recipe.trainer:DEFAULT_LOSS", "is a str, expected a callable"),
    ("streamrl.consumers.trainer.advantages:make_group_normalized", "1 positional argument"),
])
def test_bad_paths_are_explained(path: str, message: str) -> None:
    with pytest.raises(ResolveError, match=message.replace("(", r"\(").replace(".", r"\.")):
        resolve_hooks(with_algorithm(advantage=path))


def test_a_typo_in_the_recipe_fails_at_load(tmp_path: Path) -> None:
    text = RECIPE.read_text()
    for field, path in (("loss", "streamrl.consumers.trainer.losses:decoupled"),
                        ("advantage", "streamrl.consumers.trainer.advantages:nope")):
        recipe = tmp_path / f"{field}.toml"
        recipe.write_text(text + f'\n[trainer.algorithm]\n{field} = "{path}"\n'
                          if "[trainer.algorithm]" not in text else
                          text.replace("[trainer.algorithm]",
                                       f'[trainer.algorithm]\n{field} = "{path}"', 1))
        with pytest.raises(ConfigError, match=f"{recipe}: {field} .*has no attribute"):
            load_config(recipe)


@pytest.mark.parametrize(("advantage", "loss"), [
    ("rloo", "gspo"), ("reinforce_pp", "gspo_token"), ("dr_grpo", "cispo"),
    ("reinforce_pp_baseline", "ppo_tis")])
def test_short_names_resolve_to_the_built_ins(advantage: str, loss: str) -> None:
    from streamrl.consumers.trainer import advantages, losses
    hooks = resolve_hooks(with_algorithm(advantage=advantage, loss=loss))
    assert hooks.advantage is getattr(advantages, advantage)
    assert hooks.loss is getattr(losses, loss)


def test_a_misspelt_name_is_refused_at_load_with_the_known_names(tmp_path: Path) -> None:
    recipe = tmp_path / "typo.toml"
    recipe.write_text(RECIPE.read_text() + '\n[trainer.algorithm]\nloss = "gpso"\n'
                      if "[trainer.algorithm]" not in RECIPE.read_text() else
                      RECIPE.read_text().replace("[trainer.algorithm]",
                                                 '[trainer.algorithm]\nloss = "gpso"', 1))
    with pytest.raises(ConfigError, match=r"did you mean 'gspo'.*known: cispo, decoupled_ppo"):
        load_config(recipe)


@pytest.mark.parametrize(("algorithm", "message"), [
    ({"overlong": {"buffer_tokens": 99}}, r"overlong.buffer_tokens \(99\) must be at most "
                                          r"rollout.max_new_tokens \(6\)"),
    ({"loss_config": {"kl_coef": -0.1}}, "must be >= 0"),
    ({"loss_config": {"kl_estimator": "k4"}}, r"Invalid enum value 'k4' - at `\$.trainer"),
    ({"advantage": "grpoo"}, "did you mean 'grpo'"),
])
def test_algorithm_mistakes_fail_at_load(algorithm: dict, message: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=message):
        with_algorithm(**algorithm)


def test_an_entropy_bonus_on_a_gpu_learner_is_refused_at_load() -> None:
    data = msgspec.to_builtins(load_config(RECIPE))
    data["trainer"]["algorithm"] = {"loss_config": {"entropy_coef": 0.01}}
    data["trainer"]["compute"] = {"device": "cuda"}
    with pytest.raises(msgspec.ValidationError, match="entropy_coef > 0 needs the CPU torch"):
        msgspec.convert(data, RunConfig)
