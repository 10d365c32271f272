"""Disaggregated placement: the trainer on some GPUs, the engines on the others, weights moving
over the process-group transport (`streamrl/weights/broadcast.py`), and the environment every
process a launcher starts must carry.

NVLink multicast (NVLS) stays off in every process we start: on the machines this project runs
on it is not available to us, and NCCL, torch's symmetric memory and NVSHMEM each try it on their
own unless told not to. `NVLINK_MULTICAST_OFF` is what launchers add to a child's environment.

Ranks of the weight group: the trainer is rank 0, producer `i` is rank `1 + i`; the world is
`1 + num_producers` (fixed for the run: the group cannot grow, see docs/multi-gpu.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from streamrl.launch.base import LaunchError

if TYPE_CHECKING:
    from streamrl.recipe.config import RunConfig

NVLINK_MULTICAST_OFF: dict[str, str] = {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
}


def weight_group_env(*, role: str, index: int, num_producers: int, address: str,
                     backend: str) -> dict[str, str]:
    """The environment that puts one process of a run into its weight group."""
    # Imported here: the launchers import this module, and need no torch to start processes.
    from streamrl.weights.broadcast import ENV_ADDRESS, ENV_BACKEND, ENV_RANK, ENV_WORLD

    if role not in ("trainer", "producer"):
        raise ValueError(f"role must be 'trainer' or 'producer', got {role!r}")
    if not 0 <= index < num_producers:
        raise ValueError(f"producer index {index} is not in [0, {num_producers})")
    rank = 0 if role == "trainer" else 1 + index
    return {ENV_ADDRESS: address, ENV_RANK: str(rank), ENV_WORLD: str(1 + num_producers),
            ENV_BACKEND: backend}


def split_gpus(num_gpus: int, *, trainer_gpus: int, producer_gpus: int, num_producers: int
               ) -> tuple[list[int], list[list[int]]]:
    """(the trainer's GPU ids, each producer's GPU ids) on one host: the trainer takes the first
    `trainer_gpus`, the producers the next ones in order. Raises when they do not fit, saying
    how many are missing, instead of letting two roles share a GPU by accident."""
    if trainer_gpus < 1 or producer_gpus < 1:
        raise ValueError("disaggregated placement needs whole GPUs: trainer_gpus and "
                         f"producer_gpus >= 1 (got {trainer_gpus}, {producer_gpus}); use "
                         "placement.mode = 'colocated' to share GPUs")
    need = trainer_gpus + producer_gpus * num_producers
    if need > num_gpus:
        raise ValueError(f"disaggregated placement needs {need} GPUs ({trainer_gpus} trainer + "
                         f"{num_producers} x {producer_gpus} producer) but this host has "
                         f"{num_gpus}")
    trainer = list(range(trainer_gpus))
    producers = [list(range(trainer_gpus + i * producer_gpus,
                            trainer_gpus + (i + 1) * producer_gpus)) for i in range(num_producers)]
    return trainer, producers


def visible_devices(gpus: list[int]) -> dict[str, str]:
    """CUDA_VISIBLE_DEVICES for a process that owns `gpus` (it sees them as cuda:0..)."""
    return {"CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in gpus)}


RoleEnv = Callable[[str, int, int], dict[str, str]]
"""(role, producer index, number of producers) -> extra environment of that process."""


def role_env(config: RunConfig, *, num_gpus: int | None = None) -> RoleEnv | None:
    """The per-process environment of a run whose weights go over the broadcast transport (its
    weight-group rank, world size and address), or None for other transports. The group is sized
    for `rollout.num_producers` at start and cannot grow or shrink: scaling is refused.

    With `[placement] mode = "disaggregated"` and whole GPUs per role (trainer_gpus,
    producer_gpus >= 1), each process also gets its own GPUs (`split_gpus` over this host's
    `num_gpus`, counted with torch when not given) as CUDA_VISIBLE_DEVICES."""
    weights, placement = config.weights, config.placement
    if weights.transport != "broadcast":
        return None
    fixed = config.rollout.num_producers
    gpus: tuple[list[int], list[list[int]]] | None = None
    if placement.mode == "disaggregated" and placement.trainer_gpus > 0:
        if num_gpus is None:
            import torch

            num_gpus = torch.cuda.device_count()
        gpus = split_gpus(num_gpus, trainer_gpus=int(placement.trainer_gpus),
                          producer_gpus=int(placement.producer_gpus), num_producers=fixed)

    def env(role: str, index: int, num_producers: int) -> dict[str, str]:
        if role == "producer" and num_producers != fixed:
            raise LaunchError(f"the broadcast weight transport's group is sized for {fixed} "
                              f"producers; it cannot be scaled to {num_producers} (use "
                              "weights.transport = 'file' or 'shm' to scale)")
        env = weight_group_env(role=role, index=index, num_producers=fixed,
                               address=weights.group_address, backend=weights.group_backend)
        if gpus is not None:
            env |= visible_devices(gpus[0] if role == "trainer" else gpus[1][index])
        return env

    return env
