"""Ray mode: the trainer and each producer are Ray actors in placement groups.

    streamrl run recipes/arithmetic/recipe.toml --ray              # a local Ray, this machine
    streamrl run recipes/arithmetic/recipe.toml --ray auto         # the cluster this node is in

The recipe's `[placement]` section says where: `colocated` packs the trainer's and the initial
producers' bundles on one node (STRICT_PACK: they share its GPUs, so give fractions), and
`disaggregated` spreads them (SPREAD). A bundle asks for GPUs only when the section gives the role
some, so the same recipe schedules on CPU-only nodes. Producers added by `streamrl scale` beyond
the initial bundles get a one-bundle group each. An actor that dies (OOM, a killed process, a lost
node) is restarted by Ray up to `placement.max_restarts` times and its `run` call retried: the
trainer rebuilds its state from the log, a producer starts from its committed prompt positions.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

import msgspec
import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from streamrl.launch.base import LaunchError, Member, Role
from streamrl.launch.disaggregated import NVLINK_MULTICAST_OFF
from streamrl.recipe.config import PlacementSection

MiB = 1 << 20
PLACEMENT_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0


class RunActor:
    """One process of a run inside a Ray worker: `run()` returns when the role is done."""

    def __init__(self, role: Role, log_url: str, run_id: str, index: int,
                 num_producers: int) -> None:
        import torch

        torch.set_num_threads(1)
        self.role, self.log_url, self.run_id = role, log_url, run_id
        self.index, self.num_producers = index, num_producers
        self.stopping: asyncio.Event | None = None
        self.producer: Any = None

    async def run(self) -> int:
        if self.role == "trainer":
            from streamrl.consumers.trainer.__main__ import train

            await train(self.log_url, self.run_id)
        else:
            from streamrl.producers.__main__ import produce

            self.stopping = asyncio.Event()
            await produce(self.log_url, self.run_id, self.index, self.num_producers,
                          stopping=self.stopping, on_start=self._started)
        return 0

    def _started(self, producer: Any) -> None:
        self.producer = producer

    async def stop(self, hand_over: bool = False) -> None:
        """Stop; with `hand_over` the producer requeues its unfinished prompts first."""
        if self.producer is not None:
            self.producer.hand_over = hand_over
        if self.stopping is not None:
            self.stopping.set()

    async def where(self) -> tuple[int, str]:
        return os.getpid(), socket.gethostname()


class _Actor:
    def __init__(self, handle: Any, ref: Any, role: Role, index: int, num_producers: int) -> None:
        self.handle, self.ref, self.role = handle, ref, role
        self.index, self.num_producers = index, num_producers
        self.pids: list[int] = []  # every pid seen: a new one means Ray restarted the actor


class RayLauncher:
    kind = "ray"

    def __init__(self, log_url: str, run_id: str, placement: PlacementSection, *,
                 address: str | None = None, initial_producers: int = 1) -> None:
        self.log_url, self.run_id, self.placement = log_url, run_id, placement
        self.started_ray = not ray.is_initialized()
        if self.started_ray:
            env = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **NVLINK_MULTICAST_OFF}
            if "PYTHONPATH" in os.environ:
                env["PYTHONPATH"] = os.environ["PYTHONPATH"]
            local = address in (None, "", "local")
            ray.init(address=None if local else address, include_dashboard=False,
                     num_cpus=os.cpu_count() if local else None,
                     object_store_memory=160 * MiB if local else None,
                     runtime_env={"env_vars": env}, log_to_driver=True)
        bundles = [self._bundle("trainer")] + [self._bundle("producer")] * initial_producers
        strategy = "STRICT_PACK" if placement.mode == "colocated" else "SPREAD"
        self.main_group = self._group(bundles, strategy)
        self.extra_groups: dict[int, PlacementGroup] = {}
        self.initial_producers = initial_producers
        self.trainer: _Actor | None = None
        self.producers: dict[int, _Actor] = {}
        self.stopped: list[_Actor] = []
        self.last_members: list[Member] = []
        self.closed = False

    def _bundle(self, role: Role) -> dict[str, float]:
        p = self.placement
        cpus, gpus = (p.trainer_cpus, p.trainer_gpus) if role == "trainer" else (
            p.producer_cpus, p.producer_gpus)
        bundle = {"CPU": cpus, "GPU": gpus}
        bundle = {k: v for k, v in bundle.items() if v > 0}  # CPU-only: no GPU in the bundle
        if not bundle:
            raise LaunchError(f"placement: the {role} asks for no CPU and no GPU")
        return bundle

    def _group(self, bundles: list[dict[str, float]], strategy: str) -> PlacementGroup:
        group = placement_group(bundles, strategy=strategy)
        ready, _ = ray.wait([group.ready()], timeout=PLACEMENT_TIMEOUT_S)
        if not ready:
            remove_placement_group(group)
            raise LaunchError(
                f"Ray could not place {bundles} ({strategy}) within {PLACEMENT_TIMEOUT_S:.0f} s: "
                f"the cluster has {ray.available_resources()}; lower [placement] cpus/gpus "
                "or add nodes")
        return group

    def _spawn(self, role: Role, index: int, num_producers: int) -> _Actor:
        if role == "trainer":
            group, bundle_index = self.main_group, 0
        elif index < self.initial_producers:
            group, bundle_index = self.main_group, 1 + index
        else:
            if index not in self.extra_groups:
                self.extra_groups[index] = self._group([self._bundle("producer")], "PACK")
            group, bundle_index = self.extra_groups[index], 0
        bundle = self._bundle(role)
        handle = ray.remote(RunActor).options(
            name=f"{self.run_id}-{role}-{index}", max_restarts=self.placement.max_restarts,
            max_task_retries=-1, num_cpus=bundle.get("CPU", 0), num_gpus=bundle.get("GPU", 0),
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                placement_group=group, placement_group_bundle_index=bundle_index),
        ).remote(role, self.log_url, self.run_id, index, num_producers)
        return _Actor(handle, handle.run.remote(), role, index, num_producers)

    async def start_trainer(self) -> None:
        self.trainer = self._spawn("trainer", 0, 0)

    async def start_producer(self, index: int, num_producers: int) -> None:
        assert index not in self.producers, f"producer {index} is already running"
        self.producers[index] = self._spawn("producer", index, num_producers)

    async def stop_producer(self, index: int) -> None:
        actor = self.producers.pop(index)
        await _stop(actor, hand_over=True)
        self.stopped.append(actor)

    async def trainer_exit_code(self) -> int | None:
        assert self.trainer is not None, "start_trainer first"
        for actor in self.producers.values():
            if _done(actor.ref):  # a producer returns only when told to stop
                _result(actor, "producer")
                raise LaunchError(f"producer {actor.index} ended on its own")
        if not _done(self.trainer.ref):
            return None
        return _result(self.trainer, "trainer")

    async def members(self) -> list[Member]:
        if self.closed:  # Ray may be shut down: the last snapshot, every actor stopped
            return [msgspec.structs.replace(m, status="stopped") for m in self.last_members]
        actors = [a for a in [self.trainer, *self.producers.values()] if a is not None]
        self.last_members = list(await asyncio.gather(*(_member(a) for a in actors)))
        return self.last_members

    async def close(self) -> None:
        if self.closed:
            return
        await self.members()
        self.closed = True
        await asyncio.gather(*(_stop(a, hand_over=False) for a in self.producers.values()))
        self.producers.clear()
        if self.trainer is not None:
            ray.kill(self.trainer.handle, no_restart=True)
        for group in [self.main_group, *self.extra_groups.values()]:
            remove_placement_group(group)
        self.extra_groups.clear()
        if self.started_ray:
            ray.shutdown()
            self.started_ray = False


async def _stop(actor: _Actor, *, hand_over: bool) -> None:
    """Ask the actor to stop (it commits and writes ProducerLeft), wait, then release it."""
    try:
        await asyncio.wait_for(actor.handle.stop.remote(hand_over), STOP_TIMEOUT_S)
        await asyncio.wait_for(asyncio.shield(actor.ref), STOP_TIMEOUT_S)
    except (TimeoutError, ray.exceptions.RayError):
        pass  # it dies below either way; its committed positions are what counts
    ray.kill(actor.handle, no_restart=True)


def _done(ref: Any) -> bool:
    ready, _ = ray.wait([ref], timeout=0)
    return bool(ready)


def _result(actor: _Actor, what: str) -> int:
    try:
        return int(ray.get(actor.ref))
    except ray.exceptions.RayError as error:
        raise LaunchError(f"{what} {actor.index} failed for good (restarts exhausted or an "
                          f"error): {error}") from None


async def _member(actor: _Actor) -> Member:
    member = Member(role=actor.role, index=actor.index, num_producers=actor.num_producers,
                    status="running" if not _done(actor.ref) else "exited")
    try:
        pid, host = await asyncio.wait_for(actor.handle.where.remote(), 5.0)
    except (TimeoutError, ray.exceptions.RayError):
        member.status = "restarting"
        return member
    if not actor.pids or actor.pids[-1] != pid:
        actor.pids.append(pid)
    member.pid, member.host, member.restarts = pid, host, len(actor.pids) - 1
    return member
