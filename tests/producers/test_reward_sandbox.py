"""Every reward call of a producer runs in a reward worker process, bounded by the recipe's
timeout (producers/rewards/sandbox.py): a reward that hangs, raises, returns garbage, prints or
kills its process costs that sample its reward (0, with the status saying why), never the
producer; the worker is restarted and the next call is scored."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from streamrl.hooks.rollout import RewardInput
from streamrl.hooks.run import ModelInitRequest
from streamrl.log import open_log
from streamrl.models import load_checkpoint
from streamrl.producers.engine.engine import TorchEngine
from streamrl.producers.rewards.sandbox import RewardSandbox, RewardSandboxError
from streamrl.producers.worker import Producer
from streamrl.recipe.config import load_recipe
from streamrl.recipe.context import PRODUCER_GROUP, RunContext
from streamrl.recipe.rewards import RewardTerm, build_reward
from streamrl.schemas import Prompt, decode_trajectories, encode_event
from tests.helpers import REPO, TINY, child_env, publish_partition
from tests.producers.reward_hooks import misbehaving
from tests.run.tiny_task import init


def sample(response: str = "right", **metadata: object) -> RewardInput:
    return RewardInput(
        prompt_id="p-1", prompt_text="question", prompt_tokens=np.zeros(2, np.int32),
        response_text=response, response_tokens=np.zeros(4, np.int32), finish_reason="stop",
        metadata=dict(metadata))


async def test_token_rewards_cross_the_pipe_and_a_nan_among_them_costs_the_sample() -> None:
    async with RewardSandbox(misbehaving, timeout_s=5.0) as rewards:
        out = await rewards.score(sample(mode="tokens"))
        assert out.token_rewards == (0.0, 0.25, 0.5, 0.75)
        bad = await rewards.score(sample(mode="nan_tokens"))
        assert bad.reward == 0 and bad.token_rewards is None
        assert bad.status.startswith("error: ValueError: the reward function returned a "
                                     "non-finite token reward")


async def test_a_misbehaving_user_reward_costs_its_sample_never_the_worker() -> None:
    async with RewardSandbox(misbehaving, timeout_s=1.0) as rewards:
        ok = await rewards.score(sample())
        assert (ok.reward, ok.status) == (1.0, "scored")
        cases = {
            "raise": "error: KeyError: \"the user's bug\"",
            "nan": "error: ValueError: the reward function returned a non-finite reward",
            "none": "error: TypeError: the reward function returned NoneType, expected "
                    "RewardOutput",
            "exit": "error: the reward worker process died (exit code 3)",
        }
        for mode, status in cases.items():
            out = await rewards.score(sample(mode=mode))
            assert out.reward == 0.0 and out.status.startswith(status), (mode, out)
            assert out.details == {"error": 1.0}
            assert (await rewards.score(sample("wrong"))).status == "scored"  # goes on
        printed = await rewards.score(sample(mode="print"))  # stdout is not the reply pipe
        assert (printed.reward, printed.status) == (0.5, "printed")

        started = time.monotonic()
        hung = await rewards.score(sample(mode="hang"))
        assert time.monotonic() - started < 5.0
        assert hung.reward == 0.0 and hung.details == {"timeout": 1.0}
        assert hung.status.startswith("timeout: no reward within 1 s")
        assert (await rewards.score(sample())).reward == 1.0  # a fresh worker


async def test_math_verify_on_a_hostile_answer_is_cut_off_by_the_timeout() -> None:
    """9^(9^(9^9)) makes sympy compute forever; math-verify's own alarm is set past the
    sandbox's timeout here, so only the worker's kill can end it."""
    math = build_reward(RewardTerm(name="math", options={"timeout_s": 600}), {})
    async with RewardSandbox(math, timeout_s=1.5) as rewards:
        started = time.monotonic()
        out = await rewards.score(sample(r"\boxed{9^{9^{9^{9}}}}", ground_truth="5"))
        assert time.monotonic() - started < 6.0
        assert (out.reward, out.details) == (0.0, {"timeout": 1.0})


async def test_rewards_that_cannot_reach_a_worker_are_refused_at_start() -> None:
    with pytest.raises(RewardSandboxError, match="cannot be sent to a reward worker process"):
        RewardSandbox(lambda s: None, timeout_s=1.0)  # type: ignore[arg-type,return-value]


async def test_the_producer_records_failed_rewards_and_keeps_publishing(tmp_path: Path) -> None:
    """The real producer's scoring path: three prompts through a tiny engine; the reward raises
    for the second and hangs for the third. All three groups are published and committed."""
    text = TINY.read_text().replace(
        'reward = "tests.run.tiny_task:reward"',
        'reward = "tests.producers.reward_hooks:misbehaving"\nreward_timeout_s = 0.5')
    text = text.replace("samples_per_prompt = 4", "samples_per_prompt = 2").replace(
        "batch_size = 8", "batch_size = 2")
    (tmp_path / "recipe.toml").write_text(text)
    config, hooks = load_recipe(tmp_path / "recipe.toml")
    ctx = RunContext(run_id="rewards", config=config, init_checkpoint=tmp_path / "init",
                     run_dir=tmp_path, resolved_hooks=hooks)
    engine = TorchEngine(load_checkpoint(init(ModelInitRequest(out_dir=tmp_path / "init",
                                                               seed=0))),
                         config.rollout.engine)
    async with open_log("memory://") as log:
        for stream in ctx.streams.all().values():
            await log.ensure_stream(stream, 1)
        for i, mode in enumerate(("ok", "raise", "hang")):
            await log.append(ctx.streams.prompts, encode_event(Prompt(
                run_id=ctx.run_id, prompt_id=f"q{i}", text="12=", metadata={"mode": mode})),
                partition=0)
        producer = Producer(log, ctx, engine, 0, 1)
        await publish_partition(producer, log)
        rows = [decode_trajectories(r.value).to_pylist()
                for r in await log.read_all(ctx.streams.trajectories)]
        by_prompt = {group[0]["prompt_id"]: group for group in rows}
        assert sorted(by_prompt) == ["q0", "q1", "q2"]
        assert all(r["reward_details"] is None for r in by_prompt["q0"])  # scored: no details
        assert [dict(r["reward_details"]) for r in by_prompt["q1"]] == [{"error": 1.0}] * 2
        assert [dict(r["reward_details"]) for r in by_prompt["q2"]] == [{"timeout": 1.0}] * 2
        assert [r["reward"] for r in by_prompt["q1"] + by_prompt["q2"]] == [0.0] * 4
        assert await log.committed(PRODUCER_GROUP, ctx.streams.prompts, 0) == 3


PARENT = """
import asyncio, sys
import numpy as np
from streamrl.hooks.rollout import RewardInput
from streamrl.producers.rewards.sandbox import RewardSandbox
from tests.producers.reward_hooks import misbehaving

async def main():
    rewards = RewardSandbox(misbehaving, timeout_s=600)
    await rewards.start()
    print(rewards.workers[0].proc.pid, flush=True)
    await rewards.score(RewardInput(
        prompt_id="p", prompt_text=None, prompt_tokens=np.zeros(1, np.int32), response_text="",
        response_tokens=np.zeros(1, np.int32), finish_reason="stop", metadata={"mode": "hang"}))

asyncio.run(main())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
async def test_a_killed_producer_leaves_no_hung_reward_worker_behind() -> None:
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PARENT, stdout=asyncio.subprocess.PIPE, env=child_env(), cwd=REPO)
    assert parent.stdout is not None
    worker = int(await asyncio.wait_for(parent.stdout.readline(), 120))
    await asyncio.sleep(0.5)  # the worker is spinning in the hung call now
    assert alive(worker)
    parent.kill()
    await parent.wait()
    deadline = time.monotonic() + 10
    while alive(worker):
        assert time.monotonic() < deadline, f"reward worker {worker} outlived its producer"
        await asyncio.sleep(0.1)


def alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"
