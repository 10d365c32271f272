"""What running every reward call in a reward worker process costs (producers/rewards/sandbox.py).

    python bench/reward_overhead.py        # CPU, ~1 min; writes bench/results/ + BENCHMARKS.md

Per call: the same reward in-process and through `RewardSandbox.score` (pickle the RewardInput,
a pipe each way, one worker, calls one after another, on uvloop as in the producer), for a
trivial reward (`exact`: the round trip alone) and for `math` (math-verify on typical answers),
5 answers of 8 correct. Then a group of 8 scored
concurrently (what the producer does per group) with 1 and 2 workers, the start of a worker
(until it has loaded the reward), and the restart a timeout costs the next call. The load average
is recorded: on a shared 2-core machine the round trip is mostly scheduling latency.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time

import numpy as np

from bench.common import RESULTS, machine_info, replace_section
from streamrl import aio
from streamrl.hooks.rollout import RewardFn, RewardInput
from streamrl.producers.rewards.sandbox import RewardSandbox
from streamrl.recipe.rewards import RewardTerm, build_reward

NAME = "reward_overhead"
ANSWERS = [r"so \boxed{\frac{1}{2}}", r"\boxed{0.5}", r"\boxed{3}", "no answer here",
           r"\boxed{x^2+1}", r"the answer is \boxed{42}", r"\boxed{1,000}", r"\boxed{\sqrt{4}}"]


def sample(response: str, truth: str = r"\frac{1}{2}") -> RewardInput:
    return RewardInput(prompt_id="p", prompt_text="q", prompt_tokens=np.zeros(64, np.int32),
                       response_text=response, response_tokens=np.zeros(256, np.int32),
                       finish_reason="stop", metadata={"ground_truth": truth})


def in_process_us(fn: RewardFn, inputs: list[RewardInput], repeat: int) -> float:
    for x in inputs:
        fn(x)  # warm caches as the worker's are
    start = time.perf_counter()
    for _ in range(repeat):
        for x in inputs:
            fn(x)
    return (time.perf_counter() - start) / (repeat * len(inputs)) * 1e6


async def sandboxed_us(fn: RewardFn, inputs: list[RewardInput], repeat: int) -> float:
    async with RewardSandbox(fn, timeout_s=30.0) as rewards:
        for x in inputs:
            await rewards.score(x)
        start = time.perf_counter()
        for _ in range(repeat):
            for x in inputs:
                await rewards.score(x)
        return (time.perf_counter() - start) / (repeat * len(inputs)) * 1e6


async def group_ms(fn: RewardFn, inputs: list[RewardInput], workers: int, repeat: int) -> float:
    async with RewardSandbox(fn, timeout_s=30.0, num_workers=workers) as rewards:
        await asyncio.gather(*(rewards.score(x) for x in inputs))
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            await asyncio.gather(*(rewards.score(x) for x in inputs))
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1e3


async def start_s(fn: RewardFn) -> float:
    start = time.perf_counter()
    async with RewardSandbox(fn, timeout_s=30.0):
        return time.perf_counter() - start


async def main() -> None:
    exact, math = build_reward("exact", {}), build_reward(RewardTerm(name="math"), {})
    trivial = [sample("1/2")] * 8
    typical = [sample(a) for a in ANSWERS]
    load_before = os.getloadavg()[0]
    rows = {
        "exact, in-process (µs/call)": in_process_us(exact, trivial, 500),
        "exact, sandboxed (µs/call)": await sandboxed_us(exact, trivial, 250),
        "math, in-process (µs/call)": in_process_us(math, typical, 5),
        "math, sandboxed (µs/call)": await sandboxed_us(math, typical, 5),
        "exact, group of 8, 1 worker (ms)": await group_ms(exact, trivial, 1, 50),
        "exact, group of 8, 2 workers (ms)": await group_ms(exact, trivial, 2, 50),
        "math, group of 8, 1 worker (ms)": await group_ms(math, typical, 1, 5),
        "math, group of 8, 2 workers (ms)": await group_ms(math, typical, 2, 5),
        "worker start, exact (s)": await start_s(exact),
        "worker start, math (s)": await start_s(math),
    }
    info = machine_info() | {"load_average": f"{load_before:.1f} → {os.getloadavg()[0]:.1f}"}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{NAME}.json").write_text(json.dumps({"info": info, "rows": rows}, indent=2))
    lines = [f"{info['date']} · {info['machine']} · Python {info['python']} · load average "
             f"{info['load_average']} (1 min)", "", "| measure | value |", "|---|---|"]
    lines += [f"| {k} | {v:,.1f} |" if v >= 10 else f"| {k} | {v:.2f} |" for k, v in rows.items()]
    lines += ["", "Sandboxed minus in-process is the price of the timeout's isolation per call "
              "(pickle + two pipe hops + a context switch each way); a worker that timed out is "
              "restarted at the next call, costing about one 'worker start'. "
              "`python bench/reward_overhead.py` rewrites this section."]
    replace_section(NAME, "\n".join(lines))
    for k, v in rows.items():
        print(f"{k:40s} {v:10.2f}")


if __name__ == "__main__":
    aio.run(main())  # uvloop, as the producer runs
