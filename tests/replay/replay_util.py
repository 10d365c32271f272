"""Helpers of the replay tests, and their reward: one that varies within a group, so every
version really changes the weights (the tiny task's echo reward is 0 for a random model, and zero
advantages train nothing: a replay of that would match trivially)."""

from __future__ import annotations

from pathlib import Path

import msgspec
from safetensors.torch import load_file, save_file

from streamrl import aio
from streamrl.hooks.rollout import RewardInput, RewardOutput
from streamrl.hooks.run import ModelInitRequest
from streamrl.log import open_log
from streamrl.streams import RunStreams
from tests.run import tiny_task


def init(request: ModelInitRequest) -> Path:
    """The tiny model with its (tied) embedding scaled down: near-uniform next-token
    probabilities, so samples of one prompt differ (the plain init answers '===' every time)."""
    out = tiny_task.init(request)
    tensors = load_file(out / "model.safetensors")
    tensors = {name: t * 0.1 if "embed_tokens" in name else t for name, t in tensors.items()}
    save_file(tensors, out / "model.safetensors")
    return out


def reward(sample: RewardInput) -> RewardOutput:
    low = sample.response_text[:1] in ("0", "1", "2", "3", "4")
    return RewardOutput(reward=float(low), status="low" if low else "other")


MAX_VERSIONS = 4


class MadeRun(msgspec.Struct, frozen=True):
    log_url: str
    run_id: str
    runs_dir: Path


def snapshot(made: MadeRun) -> dict[str, object]:
    """Everything a replay could have written to in the recorded run: the end of each of its
    streams and the trainer's committed position."""

    async def read() -> dict[str, object]:
        streams = RunStreams(made.run_id)
        async with open_log(made.log_url) as log:
            ends: dict[str, object] = {}
            for stream in (streams.prompts, streams.trajectories, streams.weights,
                           streams.events, streams.dlq):
                for p in range(await log.num_partitions(stream)):
                    ends[f"{stream}[{p}]"] = await log.end_offset(stream, p)
            ends["trainer"] = await log.committed("trainer", streams.trajectories, 0)
            return ends

    return aio.run(read())
