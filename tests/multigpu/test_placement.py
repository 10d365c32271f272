"""Disaggregated placement on one host: which GPUs and which weight-group rank each process gets,
and the environment every spawned process carries (NVLink multicast off)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streamrl.launch.disaggregated import (
    NVLINK_MULTICAST_OFF,
    split_gpus,
    visible_devices,
    weight_group_env,
)
from streamrl.launch.local import spawn
from streamrl.weights.broadcast import GroupConfig
from tests.helpers import REPO


async def test_every_spawned_process_keeps_nvlink_multicast_off(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch
                                                                ) -> None:
    monkeypatch.setenv("NCCL_NVLS_ENABLE", "1")  # even a parent that turned it on
    out = tmp_path / "env.json"
    proc = await spawn("tests.multigpu.print_env", str(out))
    assert await proc.wait() == 0
    env = json.loads(out.read_text())
    assert {k: env.get(k) for k in NVLINK_MULTICAST_OFF} == {
        "NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
        "NVSHMEM_DISABLE_NVLS": "1"}


def test_gpus_are_split_between_trainer_and_engines_or_refused() -> None:
    trainer, producers = split_gpus(8, trainer_gpus=4, producer_gpus=2, num_producers=2)
    assert trainer == [0, 1, 2, 3] and producers == [[4, 5], [6, 7]]
    assert visible_devices(producers[1]) == {"CUDA_VISIBLE_DEVICES": "6,7"}
    with pytest.raises(ValueError, match=r"needs 9 GPUs .* this host has 8"):
        split_gpus(8, trainer_gpus=1, producer_gpus=2, num_producers=4)
    with pytest.raises(ValueError, match="colocated"):
        split_gpus(2, trainer_gpus=1, producer_gpus=0, num_producers=1)


def test_ranks_of_the_weight_group_follow_the_roles() -> None:
    envs = [weight_group_env(role="trainer", index=0, num_producers=2, address="10.0.0.1:29531",
                             backend="nccl")]
    envs += [weight_group_env(role="producer", index=i, num_producers=2,
                              address="10.0.0.1:29531", backend="nccl") for i in range(2)]
    groups = [GroupConfig.from_env(env) for env in envs]
    assert [(g.rank, g.world_size, g.backend, g.address) for g in groups] == [
        (0, 3, "nccl", "10.0.0.1:29531"), (1, 3, "nccl", "10.0.0.1:29531"),
        (2, 3, "nccl", "10.0.0.1:29531")]
    with pytest.raises(ValueError, match="producer index 2"):
        weight_group_env(role="producer", index=2, num_producers=2, address="h:1", backend="gloo")


def test_the_disaggregated_recipe_gives_each_process_its_gpus_and_rank() -> None:
    from streamrl.launch.base import LaunchError
    from streamrl.launch.disaggregated import role_env
    from streamrl.recipe.config import load_config

    config = load_config(REPO / "recipes/arithmetic/recipe_gpu_disaggregated.toml")
    env = role_env(config, num_gpus=2)
    assert env is not None
    trainer, producer = env("trainer", 0, 0), env("producer", 0, 1)
    assert trainer["CUDA_VISIBLE_DEVICES"] == "0" and producer["CUDA_VISIBLE_DEVICES"] == "1"
    assert [GroupConfig.from_env(e).rank for e in (trainer, producer)] == [0, 1]
    assert GroupConfig.from_env(producer).backend == "nccl"
    with pytest.raises(LaunchError, match="cannot be scaled to 2"):
        env("producer", 1, 2)
    with pytest.raises(ValueError, match="needs 2 GPUs"):
        role_env(config, num_gpus=1)
    colocated = load_config(REPO / "recipes/arithmetic/recipe_gpu.toml")
    assert role_env(colocated, num_gpus=2) is None  # cuda_ipc: nothing to add
