"""Hook paths: the defaults resolve, and every kind of typo says what is wrong."""

from __future__ import annotations

import msgspec
import pytest
from streamrl.consumers.trainer import (
    DEFAULT_ADVANTAGE,
    DEFAULT_LOSS,
    AlgorithmConfig,
    ResolveError,
    decoupled_ppo,
    grpo,
    resolve,
    resolve_advantage,
    resolve_loss,
)
from streamrl.consumers.trainer.batch import BatchConfig


def test_defaults_resolve_to_grpo_and_decoupled_ppo() -> None:
    assert resolve_advantage(DEFAULT_ADVANTAGE) is grpo
    assert resolve_loss(DEFAULT_LOSS) is decoupled_ppo
    assert resolve("streamrl.consumers.trainer.batch:BatchConfig.__post_init__") is (
        BatchConfig.__post_init__)
    config = msgspec.convert({"loss": "streamrl.consumers.trainer.losses:ppo_tis",
                              "loss_config": {"clip_high": 0.28}}, AlgorithmConfig)
    assert config.loss_config.clip_high == 0.28 and config.advantage == DEFAULT_ADVANTAGE


@pytest.mark.parametrize(("path", "message"), [
    ("streamrl.consumers.trainer.advantages.grpo", "is not an import path"),
    ("streamrl.consumers.trainer.advantages:grpoo",
     "advantage 'streamrl.consumers.trainer.advantages:grpoo': module "
     "'streamrl.consumers.trainer.advantages' "
     "has no attribute 'grpoo'"),
    ("streamrl.consumers.trainr.advantages:grpo", "no module named streamrl.consumers.trainr"),
    ("streamrl.consumers.trainer.registry:DEFAULT_LOSS", "is a str, expected a callable"),
    ("streamrl.consumers.trainer.advantages:make_group_normalized", "1 positional argument"),
])
def test_bad_paths_are_explained(path: str, message: str) -> None:
    with pytest.raises(ResolveError, match=message.replace("(", r"\(").replace(".", r"\.")):
        resolve_advantage(path)


def test_a_typo_in_the_config_fails_at_load() -> None:
    with pytest.raises(ResolveError, match="has no attribute 'decoupled'"):
        AlgorithmConfig(loss="streamrl.consumers.trainer.losses:decoupled")
    with pytest.raises(msgspec.ValidationError, match="has no attribute"):
        msgspec.convert({"advantage": "streamrl.consumers.trainer.advantages:nope"},
                        AlgorithmConfig)
