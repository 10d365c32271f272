"""Periodic evaluation on the run's eval file (`[eval] every_versions`), run by producer 0.

    evaluation = Evaluation(ctx, producer_id, generate=client.generate, score=rewards.score)
    evaluation.last_done = await last_evaluated(log, ctx.streams.events)   # after a restart
    if evaluation.due(engine.version):           # a multiple of N reached since the last one
        event = await evaluation.run(engine.version)        # EvalResult: mean@k, pass@k

Who runs it, and why: the producer with index 0, at the version it has just loaded, on its own
engine (batched with its training rollouts). A producer holds the weights already, so an
evaluation costs generation only: no extra process, no second copy of the model. While it runs
the producer loads no newer version, so every eval sample comes from exactly `version`; training
rollouts continue meanwhile. A version a producer skipped (it loads the newest announced one) is
evaluated at the first version it loads past it: `EvalResult.version` says which.

What it guarantees: the eval samples never reach the trajectories stream (only the `EvalResult`
event is written), so nothing trains on them; each is seeded by (run seed, version, prompt id,
sample index), so an evaluation of the same version gives the same samples; they are scored with
the run's resolved reward through the producer's reward workers (the same timeout: a reward that
hangs or raises scores 0 and is counted in `num_reward_failures`). Replay re-trains recorded
batches and starts no producer, so it never evaluates again; a restarted producer 0 reads the
events stream (`last_evaluated`) and does not repeat a version already recorded.

pass@k is the unbiased estimator of the Codex paper (Chen et al. 2021): with n samples of a
prompt of which c pass, 1 - C(n-c, k) / C(n, k), averaged over prompts.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Sequence

import numpy as np

from streamrl.hooks.generation import SamplingParams, seed_from_request_id
from streamrl.hooks.rollout import (
    Generate,
    OpenChat,
    RewardInput,
    RewardOutput,
    RolloutInput,
    RolloutSample,
)
from streamrl.hooks.run import PROMPT_TEXT, PromptSpec, stop_token_ids
from streamrl.log import Log
from streamrl.producers.agent import ChatEndpoint
from streamrl.recipe.context import RunContext
from streamrl.schemas import DecodeError, EvalResult, decode_event

Score = Callable[[RewardInput], Awaitable[RewardOutput]]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one prompt sampled `n` times with `c` passing samples:
    1 - C(n-c, k) / C(n, k), the chance that k of the n samples drawn without replacement
    include a passing one."""
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


async def last_evaluated(log: Log, events_stream: str) -> int:
    """The newest version an `EvalResult` of the run records, or -1."""
    last = -1
    for record in await log.read_all(events_stream, 0):
        try:
            event = decode_event(record.value, "events")
        except DecodeError:
            continue  # not ours to judge here: the events' readers dead-letter it
        if isinstance(event, EvalResult):
            last = max(last, event.version)
    return last


class Evaluation:
    """The run's eval prompts (`data.eval`, the first `eval.max_prompts` rows), sampled and
    scored at a given version."""

    def __init__(self, ctx: RunContext, producer_id: str, *, generate: Generate,
                 score: Score, chat: ChatEndpoint | None = None) -> None:
        self.ctx, self.producer_id = ctx, producer_id
        self.config = ctx.config.eval
        self.generate, self.score = generate, score
        self.chat = chat  # an agent rollout's sessions (producers/agent)
        self.hooks = ctx.hooks
        source = self.hooks.eval_prompts
        if source is None or self.config.every_versions < 1:
            raise ValueError("periodic evaluation needs data.eval and eval.every_versions >= 1")
        self.prompts: Sequence[PromptSpec] = source.load().specs[:self.config.max_prompts]
        self.stop_token_ids = stop_token_ids(self.hooks.tokenizer)
        self.last_done = -1  # the newest version evaluated (recorded in the events stream)

    def due(self, version: int) -> bool:
        """Whether a multiple of `every_versions` newer than the last evaluation is <= version."""
        every = self.config.every_versions
        return version >= 0 and version // every * every > self.last_done

    async def run(self, version: int) -> EvalResult:
        """Every eval prompt sampled `samples` times at `version`, scored; the event to record."""
        t0 = time.perf_counter()
        groups = await asyncio.gather(*(self._prompt(spec, version) for spec in self.prompts))
        self.last_done = version
        n = self.config.samples
        threshold = self.config.pass_threshold
        rewards = [[out.reward for out in group] for group in groups]
        passed = [sum(r >= threshold for r in group) for group in rewards]
        pass_at = {k: float(np.mean([pass_at_k(n, c, k) for c in passed]))
                   for k in sorted({1, n})}
        failures = sum(bool(out.details.get("timeout") or out.details.get("error"))
                       for group in groups for out in group)
        return EvalResult(
            run_id=self.ctx.run_id, producer_id=self.producer_id, version=version,
            num_prompts=len(groups), num_samples=n, mean_reward=float(np.mean(rewards)),
            pass_at=pass_at, pass_threshold=threshold, num_reward_failures=failures,
            duration_ms=int((time.perf_counter() - t0) * 1000))

    async def _prompt(self, spec: PromptSpec, version: int) -> list[RewardOutput]:
        assert spec.tokens is not None  # dataset prompts are rendered to ids when loaded
        tokens = np.asarray(spec.tokens, dtype=np.int32)
        metadata = {**spec.metadata, PROMPT_TEXT: spec.text}  # as the driver publishes a row
        samples = await self.hooks.rollout(RolloutInput(
            prompt_id=spec.prompt_id, prompt_text=spec.text, prompt_tokens=tokens,
            metadata=metadata, num_samples=self.config.samples,
            params=lambda j: self._params(spec.prompt_id, version, j), generate=self.generate,
            tokenizer=self.hooks.tokenizer, chat=self._sessions(spec.prompt_id, version)))
        return list(await asyncio.gather(*(self.score(self._reward_input(spec, tokens, metadata, s))
                                           for s in samples)))

    def _sessions(self, prompt_id: str, version: int) -> OpenChat | None:
        """An agent rollout's chat sessions for the prompt's eval samples."""
        chat = self.chat
        if chat is None:
            return None
        return lambda j: chat.session(self._params(prompt_id, version, j),
                                      name=f"eval-{version}-{prompt_id}-{j}")

    def _params(self, prompt_id: str, version: int, j: int) -> SamplingParams:
        r = self.ctx.config.rollout
        temperature = self.config.temperature
        return SamplingParams(
            temperature=r.temperature if temperature is None else temperature, top_p=r.top_p,
            top_k=r.top_k, max_new_tokens=r.max_new_tokens, stop_token_ids=self.stop_token_ids,
            seed=seed_from_request_id(f"{self.ctx.config.run.seed}/eval/{version}/{prompt_id}/{j}"))

    def _reward_input(self, spec: PromptSpec, tokens: np.ndarray, metadata: dict,
                      sample: RolloutSample) -> RewardInput:
        response = sample.response_tokens
        if sample.finish_reason == "stop":
            response = response[:-1]  # the stop token is not part of the answer (as in training)
        return RewardInput(
            prompt_id=spec.prompt_id, prompt_text=spec.text, prompt_tokens=tokens,
            response_text=self.hooks.tokenizer.decode(response),
            response_tokens=sample.response_tokens, finish_reason=sample.finish_reason,
            metadata=metadata)
