"""LoRA training on a tiny real model: the base stays frozen, the optimizer holds the adapter
alone, a weight version is the adapter, a fresh adapter is the base model, and a resumed
learner (dropout on) lands on bit-identical adapters."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
import torch

from streamrl.consumers.trainer.advantages import grpo
from streamrl.consumers.trainer.batch import build_batch
from streamrl.consumers.trainer.learner import Learner, LearnerSetup
from streamrl.consumers.trainer.losses import decoupled_ppo
from streamrl.models.checkpoint import load_checkpoint, save_checkpoint
from streamrl.models.lora import SCALE_KEY, initial_adapter, is_adapter
from streamrl.recipe.config import ConfigError, TrainerSection, load_config
from streamrl.recipe.trainer import LoraConfig
from streamrl.weights import weights_digest
from tests.trainer.helpers import sample, tiny_model

PROMPT = [1, 2, 3]
RESPONSES = [[4, 5, 6, 7], [8, 9], [12, 13, 14], [16, 17, 18, 19]]


def rows(version: int) -> list:
    return [sample(PROMPT, r, reward=float(i == version % 4), versions=[version] * len(r),
                   group_id=f"g{version}", sample_id=f"v{version}-{i}", logprobs=[-3.0] * len(r))
            for i, r in enumerate(RESPONSES)]


def setup(lora: LoraConfig | None) -> LearnerSetup:
    trainer = TrainerSection(batch_size=4, lr=1e-2, minibatches=2, lora=lora)
    return LearnerSetup(trainer=trainer, temperature=1.0, advantage=grpo, loss=decoupled_ppo)


@pytest.fixture
def init(tmp_path: Path) -> Path:
    path = tmp_path / "init"
    save_checkpoint(tiny_model(seed=1), path)
    return path


def test_lora_trains_the_adapter_alone_on_a_frozen_base(init: Path) -> None:
    full = Learner.from_checkpoint(init, setup(None))
    learner = Learner.from_checkpoint(init, setup(LoraConfig(rank=4, alpha=8)))
    base = {k: v.clone() for k, v in learner.model.state_dict().items()}
    # B = 0: a fresh adapter is exactly the base model
    batch = build_batch(rows(1))
    with torch.no_grad():
        assert torch.equal(learner.logprobs(batch), full.logprobs(batch))
    v0 = {k: v.clone() for k, v in learner.hf_state_dict().items()}
    assert is_adapter(v0) and float(v0[SCALE_KEY]) == 2.0  # alpha / rank
    assert len(v0) == 2 * 7 * 2 + 1  # A and B of 7 linear layers in 2 decoder layers, scale
    for version in (1, 2):
        learner.step(rows(version), [1.0] * 4, version=version)
    after = learner.hf_state_dict()
    assert any(not torch.equal(after[k], v0[k]) for k in after if ".lora_B." in k)
    # the base did not move, and only the adapter has optimizer state
    assert all(torch.equal(v, base[k]) for k, v in learner.model.state_dict().items())
    trained = {id(p) for p in learner.model.parameters() if p.requires_grad}
    assert len(trained) == len(v0) - 1
    assert {id(p) for g in learner.optimizer.param_groups for p in g["params"]} == trained
    assert len(learner.optimizer.state) == len(trained)
    # and the version is far smaller than the model
    version_bytes = sum(t.numel() * t.element_size() for t in after.values())
    model_bytes = sum(t.numel() * t.element_size() for t in full.hf_state_dict().values())
    assert version_bytes < model_bytes / 2


def test_fresh_adapter_is_the_same_in_every_process(init: Path) -> None:
    """The driver announces version 0 from `initial_adapter` without loading the weights; the
    trainer's fresh adapter must hash the same."""
    lora = LoraConfig(rank=4, alpha=8, seed=3)
    learner = Learner.from_checkpoint(init, setup(lora))
    assert weights_digest(learner.hf_state_dict()) == weights_digest(
        initial_adapter(learner.model_config, lora.spec()))
    other = LoraConfig(rank=4, alpha=8, seed=4)
    assert weights_digest(initial_adapter(learner.model_config, other.spec())) != \
        weights_digest(learner.hf_state_dict())


def test_resumed_lora_learner_is_bit_exact_with_dropout(init: Path, tmp_path: Path) -> None:
    lora = LoraConfig(rank=4, alpha=8, dropout=0.1, target_modules=("q_proj", "v_proj"))
    learner = Learner.from_checkpoint(init, setup(lora))
    learner.step(rows(1), [1.0] * 4, version=1)
    learner.save(tmp_path / "v1")
    assert (tmp_path / "v1" / "adapter_model.safetensors").is_file()
    learner.step(rows(2), [1.0] * 4, version=2)
    resumed = Learner.from_checkpoint(tmp_path / "v1", setup(lora))
    resumed.step(rows(2), [1.0] * 4, version=2)
    assert weights_digest(resumed.hf_state_dict()) == weights_digest(learner.hf_state_dict())
    assert len(learner.hf_state_dict()) == 2 * 2 * 2 + 1
    # the checkpoint's base is the initial one, unchanged
    saved, initial = load_checkpoint(tmp_path / "v1"), load_checkpoint(init)
    assert weights_digest(saved.state_dict()) == weights_digest(initial.state_dict())


@pytest.mark.parametrize(("lora", "message"), [
    ({"rank": 0}, "rank >= 1"),
    ({"target_modules": "q_proj"}, "all-linear"),
    ({"rank": 4, "typo": 1}, "typo"),
])
def test_bad_lora_sections_are_refused(lora: dict, message: str) -> None:
    with pytest.raises((ValueError, msgspec.ValidationError), match=message):
        msgspec.convert({"lora": lora}, TrainerSection)


@pytest.mark.parametrize(("trainer", "rollout", "message"), [
    ('backend = "megatron"\ncompute = { device = "cuda" }', "",
     r"trainer\.lora needs trainer\.backend"),
    ("", 'engine_factory = "streamrl.producers.sglang:engine_from_options"\n',
     r"trainer\.lora needs the embedded torch engine"),
])
def test_lora_the_run_cannot_serve_is_refused_when_the_recipe_loads(
        tmp_path: Path, trainer: str, rollout: str, message: str) -> None:
    text = (Path(__file__).parents[1] / "run" / "tiny.toml").read_text()
    recipe = tmp_path / "lora.toml"
    recipe.write_text(text.replace("lr = 1e-3", f"lr = 1e-3\n{trainer}\nlora = {{ rank = 4 }}")
                      .replace("[rollout]\n", f"[rollout]\n{rollout}"))
    with pytest.raises(ConfigError, match=message):
        load_config(recipe)
