"""`streamrl demo`: a run's five streams written and read back through the real log, no model.

    streamrl demo                                   # embedded file log under runs/log
    streamrl demo --log kafka://127.0.0.1:9092      # the same against Kafka

Synthetic producers answer arithmetic prompts with random digits (reward 1 when right) and publish
Arrow trajectories; a trainer-like consumer forms batches exactly once (BatchFormed committed
atomically with its consumed positions) and announces a weight version per batch; one corrupted
trajectory message goes to the dead-letter stream. No tensors are trained: this shows the log, not
learning. It ends with `streamrl inspect` of the run.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import socket
import sys
import time
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
from rich.console import Console
from rich.progress import Progress

from streamrl import aio
from streamrl.commands import inspect
from streamrl.dlq import DeadLetters
from streamrl.log import Append, Log, StreamPartition, open_log
from streamrl.schemas import (
    BatchFormed,
    LogPosition,
    ProducerJoined,
    ProducerLeft,
    Prompt,
    RunStarted,
    Sample,
    Staleness,
    TrainStep,
    WeightVersionAnnounced,
    decode_event,
    decode_trajectories,
    encode_event,
    encode_trajectories,
    samples_to_batch,
)
from streamrl.streams import RunStreams

VOCAB = "0123456789+=$"  # a character tokenizer; "$" ends an answer
TRAINER_GROUP = "trainer"
PRODUCER_GROUP = "producers"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", default=None, help="run id (default: demo-<time>)")
    p.add_argument("--prompts", type=int, default=64, help="number of prompts")
    p.add_argument("--samples-per-prompt", type=int, default=4)
    p.add_argument("--producers", type=int, default=2, help="concurrent producers")
    p.add_argument("--batch-size", type=int, default=32, help="samples per training batch")
    p.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    return aio.run(_demo(args))


def _config(args: argparse.Namespace) -> dict[str, object]:
    names = ("log", "prompts", "samples_per_prompt", "producers", "batch_size", "seed")
    return {name: getattr(args, name) for name in names}


def tokenize(text: str) -> np.ndarray:
    return np.array([VOCAB.index(c) for c in text], dtype=np.int32)


async def _demo(args: argparse.Namespace) -> int:
    run_id = args.run or f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    streams = RunStreams(run_id)
    rng = np.random.default_rng(args.seed)
    total = args.prompts * args.samples_per_prompt
    async with open_log(args.log, writer_id=f"{run_id}-trainer") as log:
        if streams.events in await log.list_streams(run_id):
            print(f"run {run_id!r} already exists in {log.url}: choose another --run, or look "
                  f"at it with: streamrl inspect {run_id} --log {args.log}", file=sys.stderr)
            return 2
        await log.ensure_stream(streams.prompts, args.producers)
        for stream in (streams.trajectories, streams.weights, streams.events, streams.dlq):
            await log.ensure_stream(stream, 1)
        await log.append(streams.events, encode_event(RunStarted(
            run_id=run_id, config=_config(args), seed=args.seed,
            streamrl_version="0.1.0", recipe="demo")))
        await log.append_many([
            Append(stream=streams.prompts, key=f"p{i}".encode(), value=encode_event(Prompt(
                run_id=run_id, prompt_id=f"p{i}", num_samples=args.samples_per_prompt,
                text=f"{a}+{b}=", metadata={"answer": str(a + b)})))
            for i, (a, b) in enumerate(rng.integers(0, 50, size=(args.prompts, 2)))
        ])
        await _announce(log, run_id, version=0, parent=None, batch_ids=())
        with Progress() as progress:
            produced = progress.add_task("producers: samples published", total=total)
            trained = progress.add_task("trainer: samples in batches", total=total)
            producers = asyncio.gather(*(
                _producer(log, run_id, i, args, progress, produced) for i in range(args.producers)
            ))
            await _trainer(log, run_id, args, producers, progress, trained)
        console = Console()
        console.print()
        status = await inspect.summarize(log, run_id, console)
    console.print(f"\nlook closer: streamrl tail {streams.events} --log {args.log}")
    return status


async def _announce(log: Log, run_id: str, version: int, parent: int | None,
                    batch_ids: tuple[str, ...]) -> None:
    digest = hashlib.sha256(f"{run_id}:{version}".encode()).hexdigest()
    await log.append(RunStreams(run_id).weights, encode_event(WeightVersionAnnounced(
        run_id=run_id, version=version, parent=parent, digest=digest, num_bytes=0,
        locator="demo://no-tensors", transport="none", batch_ids=batch_ids)))


async def _latest_version(log: Log, run_id: str) -> int:
    stream = RunStreams(run_id).weights
    end = await log.end_offset(stream, 0)
    records = await log.read(stream, 0, max(end - 1, 0), timeout_s=0)
    return decode_event(records[-1].value, "weights").version if records else 0


async def _producer(log: Log, run_id: str, index: int, args: argparse.Namespace,
                    progress: Progress, task: object) -> None:
    """Producer `index` owns prompts partition `index`; resumes from its group's position."""
    streams = RunStreams(run_id)
    producer_id = f"demo-producer-{index}"
    rng = np.random.default_rng([args.seed, index])
    await log.append(streams.events, encode_event(ProducerJoined(
        run_id=run_id, producer_id=producer_id, host=socket.gethostname(), pid=os.getpid())))
    offset = await log.committed(PRODUCER_GROUP, streams.prompts, index) or 0
    while records := await log.read(streams.prompts, index, offset, max_records=8):
        if index == 0 and offset == 8:
            await _publish_corrupt_message(log, streams)
        for record in records:
            prompt = decode_event(record.value, "prompts")
            version = await _latest_version(log, run_id)
            samples = [_sample(run_id, producer_id, prompt, k, version, rng)
                       for k in range(prompt.num_samples)]
            await asyncio.sleep(0.01)  # stands in for generation time
            await log.append(streams.trajectories, encode_trajectories(samples_to_batch(samples)),
                             key=prompt.prompt_id.encode())
            progress.advance(task, len(samples))
            offset = record.offset + 1
            await log.commit(PRODUCER_GROUP, {StreamPartition(streams.prompts, index): offset})
    await log.append(streams.events, encode_event(ProducerLeft(
        run_id=run_id, producer_id=producer_id, host=socket.gethostname(), pid=os.getpid(),
        reason="prompts exhausted")))


def _sample(run_id: str, producer_id: str, prompt: Prompt, k: int, version: int,
            rng: np.random.Generator) -> Sample:
    right = rng.random() < 0.3
    guess = "".join(str(d) for d in rng.integers(0, 10, size=rng.integers(1, 4)))
    answer = (prompt.metadata["answer"] if right else guess) + "$"
    response = tokenize(answer)
    now = datetime.now(UTC)
    return Sample(
        run_id=run_id, sample_id=f"{prompt.prompt_id}-s{k}", group_id=prompt.prompt_id,
        prompt_id=prompt.prompt_id, sample_index=k, producer_id=producer_id,
        policy_version=version, prompt_tokens=tokenize(prompt.text or ""),
        response_tokens=response,
        logprobs=np.log(rng.uniform(0.05, 1.0, size=len(response))).astype(np.float32),
        loss_mask=np.ones(len(response), dtype=bool),
        reward=float(answer[:-1] == prompt.metadata["answer"]), finish_reason="stop",
        seed=int(rng.integers(0, 2**31)), started_at=now, finished_at=now)


async def _publish_corrupt_message(log: Log, streams: RunStreams) -> None:
    """A producer bug, simulated: a trajectory message whose bytes were damaged in flight."""
    first = (await log.read(streams.trajectories, 0, 0, max_records=1))[0].value
    damaged = bytearray(first)
    damaged[len(damaged) // 2 :] = bytes(len(damaged) - len(damaged) // 2)
    await log.append(streams.trajectories, bytes(damaged), key=b"corrupted")


async def _trainer(log: Log, run_id: str, args: argparse.Namespace, producers: asyncio.Future,
                   progress: Progress, task: object) -> None:
    """Reads trajectories from its committed position and forms batches of whole groups (one
    record each), each committed atomically with the position after its last record."""
    streams = RunStreams(run_id)
    dlq = DeadLetters(log, run_id, component="demo-trainer")
    offset = await log.committed(TRAINER_GROUP, streams.trajectories, 0) or 0
    version = await _latest_version(log, run_id)
    pending: list[tuple[LogPosition, list[str], list[int]]] = []

    def decode(data: bytes) -> pa.RecordBatch:
        return decode_trajectories(data, vocab_size=len(VOCAB))

    while True:
        done = producers.done()  # read once more after the producers finish, then stop
        records = await log.read(streams.trajectories, 0, offset, max_records=16, timeout_s=0.1)
        if not records and done:
            break
        for record in records:
            offset = record.offset + 1
            batch = await dlq.decode_or_reject(record, decode)
            if batch is not None:
                pending.append((LogPosition(*record.position), batch["sample_id"].to_pylist(),
                                batch["policy_version"].to_pylist()))
            if sum(len(ids) for _, ids, _ in pending) >= args.batch_size:
                version = await _train_batch(log, run_id, version, pending, offset)
                progress.advance(task, sum(len(ids) for _, ids, _ in pending))
                pending = []
    await producers  # surfaces a producer's exception
    if pending:
        version = await _train_batch(log, run_id, version, pending, offset)
        progress.advance(task, sum(len(ids) for _, ids, _ in pending))


async def _train_batch(log: Log, run_id: str, version: int,
                       groups: list[tuple[LogPosition, list[str], list[int]]],
                       next_offset: int) -> int:
    """One (pretend) optimizer step: BatchFormed + TrainStep committed with the positions."""
    streams = RunStreams(run_id)
    positions = [pos for pos, ids, _ in groups for _ in ids]
    lags = [version - v for _, _, versions in groups for v in versions]
    batch_id = f"b{version + 1:05d}"
    events = [
        BatchFormed(run_id=run_id, batch_id=batch_id, positions=tuple(positions),
                    sample_ids=tuple(sid for _, ids, _ in groups for sid in ids),
                    policy_version=version,
                    staleness=Staleness(min=min(lags), max=max(lags), mean=float(np.mean(lags)))),
        TrainStep(run_id=run_id, step=version + 1, version=version + 1,
                  metrics={"num_samples": float(len(positions))}),
    ]
    await log.transact(TRAINER_GROUP, {StreamPartition(streams.trajectories, 0): next_offset},
                       [Append(stream=streams.events, value=encode_event(e)) for e in events])
    await _announce(log, run_id, version=version + 1, parent=version, batch_ids=(batch_id,))
    return version + 1
