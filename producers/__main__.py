"""A rollout worker process of a run (the run driver starts them):

    python -m producers --log runs/log --run arithmetic-20261125-101500 --index 0 --num-producers 2

SIGTERM stops it after the current decoding step; prompts it had not finished are generated again
by whoever owns their partition next, and the trainer drops any duplicate it already trained.
Producer `index` owns the prompts partitions p with p % num_producers == index
(`streamrl.streams.owned_partitions`); `streamrl scale` changes the membership, stopping producers
with SIGUSR1: they requeue their unfinished prompts and commit past them (producers/handover.py),
so the next owner neither loses nor regenerates a group.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
from collections.abc import Callable

import torch

from streamrl import aio
from streamrl.hooks.engine import Engine
from streamrl.log import open_log
from streamrl.models import load_checkpoint
from streamrl.models.checkpoint import read_safetensors
from streamrl.models.lora_files import run_adapter
from streamrl.prestart import add_run_arguments, run_id_of
from streamrl.producers.engine import TorchEngine
from streamrl.producers.metrics import serve_producer_metrics
from streamrl.producers.replica import own_dns_name
from streamrl.producers.worker import Producer
from streamrl.recipe.context import load_run_context
from streamrl.weights import fp8


async def produce(log_url: str, run_id: str, index: int, num_producers: int, *,
                  stopping: asyncio.Event | None = None,
                  on_start: Callable[[Producer], None] | None = None) -> None:
    """Run producer `index` of `num_producers` until SIGTERM/SIGINT/SIGUSR1, or until `stopping`
    is set when given (a Ray actor's `stop()`; signals are then left to the host process).
    `on_start(producer)` is called once it exists (the Ray actor keeps it to hand over)."""
    async with open_log(log_url, writer_id=f"{run_id}-producer-{index}") as log:
        ctx = await load_run_context(log, run_id)
        factory = ctx.hooks.engine_factory  # e.g. an SGLang server's adapter
        engine = (factory(ctx.init_checkpoint, dict(ctx.config.rollout.engine_options))
                  if factory is not None else
                  TorchEngine(load_checkpoint(ctx.init_checkpoint), ctx.config.rollout.engine,
                              version=0))
        qat = ctx.config.trainer.qat
        if qat is not None and qat.int4 is not None and isinstance(engine, TorchEngine):
            # Serve what the INT4 QAT trainer computes with, quantized from the fp32 weights.
            engine.use_int4(qat.int4.spec(), read_safetensors(ctx.init_checkpoint))
        if not isinstance(engine, Engine):
            raise TypeError(f"rollout.engine_factory returned a {type(engine).__name__}, which "
                            "lacks members of the Engine protocol (streamrl/hooks/engine.py)")
        if ctx.config.weights.dtype == fp8.DTYPE and isinstance(engine, TorchEngine):
            engine.use_fp8()  # version 0 as the driver published it: FP8 (weights/fp8.py)
        lora = ctx.config.trainer.lora
        if lora is not None and isinstance(engine, TorchEngine):  # the run's first version
            engine.load_adapter(run_adapter(ctx.init_checkpoint, engine.model.config,
                                            lora.spec(), lora.init))
        producer = Producer(log, ctx, engine, index, num_producers)
        if on_start is not None:
            on_start(producer)
        if stopping is not None:
            producer.stopping = stopping
        else:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, producer.stopping.set)
            loop.add_signal_handler(signal.SIGUSR1, _hand_over, producer)
        endpoint = serve_producer_metrics(producer)  # [metrics]; None when off
        try:
            await producer.run()
        finally:
            engine.close()  # the producer stopped: nothing steps the engine any more
            if endpoint is not None:
                endpoint.stop()


def _hand_over(producer: Producer) -> None:
    """SIGUSR1: stop and hand the partitions over (producers/handover.py); `streamrl scale`."""
    producer.hand_over = True
    producer.stopping.set()


def replica_index(name: str) -> int:
    """A compose replica's index from its DNS name (`streamrl-producer-3.streamrl_default` -> 2):
    compose numbers a service's containers from 1."""
    match = re.search(r"[-_](\d+)$", name.split(".")[0])
    if match is None:
        raise ValueError(f"--index auto: container name {name!r} does not end in a replica "
                         "number (is this a docker compose replica?)")
    return int(match.group(1)) - 1


def _own_index() -> int:
    """--index auto: the container's own name, by reverse DNS on the compose network (asked of
    the network's DNS server: /etc/hosts would answer with the container id)."""
    return replica_index(own_dns_name())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--log", required=True)
    add_run_arguments(p)
    p.add_argument("--index", default="0",
                   help="producer index, or `auto`: a docker compose replica's number minus 1")
    p.add_argument("--num-producers", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    return p


def main() -> None:
    p = build_parser()
    args = p.parse_args()
    args.run = run_id_of(args, p)
    if args.run is None:  # the run was refused before it started
        return
    index = _own_index() if args.index == "auto" else int(args.index)
    if not 0 <= index < args.num_producers:
        p.error(f"--index must be in [0, {args.num_producers}), got {index}")
    torch.set_num_threads(args.threads)
    aio.run(produce(args.log, args.run, index, args.num_producers))


if __name__ == "__main__":
    main()
