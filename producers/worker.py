"""The rollout worker: prompts in, scored Arrow trajectories out.

    while not stopping:
        await weights.apply(engine)       # newest announced version, between decoding steps
        await admit_prompts()             # staleness admission control, then a rollout task
        await client.step()               # one decoding step for every running sequence
    each rollout task, when its group is done:   reward, filter, publish

A worker owns the prompts partitions `owned_partitions(index, num_producers, ...)` (p with
p % num_producers == index; the run's supervisor changes the membership on `streamrl scale`, never
giving a partition two owners at once) and commits, in one transaction with each published group,
the partition's position (its oldest unfinished prompt) and the prompts past it that are finished
(producers/resume.py). A producer restarted after kill -9, or the next owner after a handover,
skips those, so every group is published exactly once. Commits are made one at a time, in the
order their state was computed (`publish_lock`): an older commit landing after a newer one would
forget finished prompts. Group and sample ids come from the prompt's position
(`streamrl.schemas.ids`).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections import deque

import msgspec
import numpy as np

from streamrl.hooks.engine import Engine
from streamrl.hooks.generation import SamplingParams, seed_from_request_id
from streamrl.hooks.rollout import (
    FilterInput,
    FilterOutput,
    RewardInput,
    RewardOutput,
    RolloutInput,
    RolloutSample,
)
from streamrl.hooks.run import prompt_text, stop_token_ids
from streamrl.log import Append, Log, Record, StreamPartition
from streamrl.producers.agent import ChatEndpoint
from streamrl.producers.budget import TrainerDrops, admission_count
from streamrl.producers.evaluate import Evaluation, last_evaluated
from streamrl.producers.handover import hand_over
from streamrl.producers.reference import ReferenceScorer
from streamrl.producers.resume import PartitionProgress
from streamrl.producers.rewards.sandbox import RewardSandbox
from streamrl.producers.rollout import EngineClient
from streamrl.producers.weight_sync import WeightSync
from streamrl.recipe.context import PRODUCER_GROUP, RunContext
from streamrl.recipe.rewards import RewardRecipe
from streamrl.schemas import (
    ProducerJoined,
    ProducerLeft,
    Prompt,
    Rejected,
    Sample,
    decode_event,
    encode_event,
    encode_trajectories,
    samples_to_batch,
)
from streamrl.schemas.ids import group_id_for, sample_id_for
from streamrl.schemas.integrity import digest_headers
from streamrl.staleness import THROTTLED, Admission, AdmissionState
from streamrl.streams import owned_partitions

DROPS_EVERY_S = 0.2  # how often a throttled producer looks for the trainer's drops


class Group(msgspec.Struct, kw_only=True):
    record: Record
    prompt: Prompt
    tokens: np.ndarray
    text: str | None  # the prompt's text: as given, or what its ids were rendered from
    task: asyncio.Task | None = None
    publishing: bool = False  # generated; its commit is under way (never cancelled)


class Producer:
    def __init__(self, log: Log, ctx: RunContext, engine: Engine, index: int,
                 num_producers: int) -> None:
        self.log, self.ctx, self.engine = log, ctx, engine
        self.index, self.num_producers = index, num_producers
        self.producer_id = f"producer-{index}"
        self.hooks = ctx.hooks
        self.tokenizer = self.hooks.tokenizer
        self.stop_token_ids = stop_token_ids(self.tokenizer)  # e.g. all of a checkpoint's eos ids
        self.weights = WeightSync(log, ctx.run_id, self.producer_id,
                                  transport=ctx.config.weights.transport)
        self.client = EngineClient(engine)
        # OpenAI-compatible chat sessions for agentic rollouts; listens only while one is open
        self.chat = ChatEndpoint(self.client.generate, self.tokenizer)
        self.rollout = self.hooks.rollout
        r = ctx.config.rollout
        self.reference = None  # the KL reference, when producers score it (reference.py)
        if ctx.config.trainer.algorithm.kl.reference == "producer":
            self.reference = ReferenceScorer(
                ctx.init_checkpoint, temperature=r.temperature or 1.0,
                device=r.engine.torch_device, dtype=r.engine.torch_dtype)
        # the recipe's reward spec, which each reward worker builds (rewards/sandbox.py)
        self.rewards = RewardSandbox(RewardRecipe(reward=r.reward, by_source=r.reward_by_source),
                                     timeout_s=r.reward_timeout_s, num_workers=r.reward_workers)
        self.groups: dict[str, Group] = {}  # started, until their commit happened
        self.queue: deque[Record] = deque()  # prompt records read but not started
        self.progress: dict[int, PartitionProgress] = {}  # per owned partition (resume.py)
        self.publish_lock = asyncio.Lock()
        # A fork's versions start at its parent's version: admission control counts from there
        # (streamrl/run/fork.py). Samples started and not known to be dropped: this producer's
        # share of those the run holds, read back in `_join`, then credited for the trainer's
        # drops of its own partitions' samples (producers/budget.py).
        self.base_version = ctx.first_version
        self.num_started = 0
        self.drops = TrainerDrops(log, ctx.streams.events)  # replaced in `_join`
        self.drops_read_at = 0.0  # time.monotonic() of the last read
        self.throttled = False
        # what the metrics endpoint reads (producers/metrics.py), counted once committed
        self.num_published_samples = self.num_generated_tokens = 0
        self.num_filtered_groups = self.num_throttled = 0
        self.stopping = asyncio.Event()
        self.hand_over = False  # set with `stopping` when the membership changes (handover.py)
        self.tasks: set[asyncio.Task] = set()  # every rollout task, publishing ones included
        # Producer 0 evaluates on data.eval every eval.every_versions (producers/evaluate.py).
        self.evaluation = (Evaluation(ctx, self.producer_id, generate=self.client.generate,
                                      score=self.rewards.score, chat=self.chat)
                           if index == 0 and ctx.config.eval.every_versions else None)
        self.eval_task: asyncio.Task | None = None

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            await self.rewards.close()  # after every rollout task: nothing is scoring now

    async def _run(self) -> None:
        await asyncio.gather(self._join(), self.rewards.start())  # workers load meanwhile
        try:
            while not self.stopping.is_set():
                if self.eval_task is None:  # an evaluation holds the version it evaluates
                    finished = self._run_finished()
                    if not finished or self.evaluation is not None:  # the last one evaluated
                        await self.weights.apply(self.engine)
                        self._evaluate_if_due()
                    if finished and self.eval_task is None:
                        break
                await self.admit_prompts()
                if self.client.has_work():
                    await self.client.step()
                else:
                    await self.weights.poll(timeout_s=0.2)  # idle: wait for work
                self._raise_failed_rollouts()
        finally:
            for group in self.groups.values():
                if group.task is not None and not group.publishing:
                    group.task.cancel()
            if self.eval_task is not None:
                self.eval_task.cancel()
                await asyncio.gather(self.eval_task, return_exceptions=True)
            # rollouts already publishing finish their transaction: never cut one in the middle
            await asyncio.gather(*self.tasks, return_exceptions=True)
            unfinished = [(g.record, g.prompt) for g in self.groups.values()]  # not committed
            reason = "run_finished" if self._run_finished() else "stopped"
            if self.hand_over and self.stopping.is_set():
                await hand_over(self.log, self.ctx, unfinished, self.queue, self.progress)
                reason = "handed_over"
            await self.log.append(self.ctx.streams.events, encode_event(ProducerLeft(
                run_id=self.ctx.run_id, producer_id=self.producer_id, host=socket.gethostname(),
                pid=os.getpid(), reason=reason)))
            self.weights.close()

    def _run_finished(self) -> bool:
        """The trainer announced the run's last version: no sample is needed any more (and its
        weight files may be gone once the trainer exits). Nothing else stops a producer that no
        supervisor stops, e.g. a compose replica."""
        return self.weights.trainer_version >= self.ctx.config.run.max_versions

    async def _join(self) -> None:
        prompts = self.ctx.streams.prompts
        num_partitions = await self.log.num_partitions(prompts)
        for p in owned_partitions(self.index, self.num_producers, num_partitions):
            committed = await self.log.committed_with_metadata(PRODUCER_GROUP, prompts, p)
            self.progress[p] = PartitionProgress.restore(committed, f"{prompts}[{p}]")
        self.num_started, self.drops = await admission_count(
            self.log, self.ctx.streams.trajectories, self.ctx.streams.events, self.index,
            self.num_producers)
        await self.log.append(self.ctx.streams.events, encode_event(ProducerJoined(
            run_id=self.ctx.run_id, producer_id=self.producer_id, host=socket.gethostname(),
            pid=os.getpid())))
        if self.evaluation is not None:
            self.evaluation.last_done = await last_evaluated(self.log, self.ctx.streams.events)
        while self.weights.latest is None and not self.stopping.is_set():
            await self.weights.poll(timeout_s=1.0)  # version 0 is announced by the driver
        await self.weights.apply(self.engine)

    async def admit_prompts(self) -> None:
        n = self.ctx.config.data.samples_per_prompt
        while True:
            admission = self._admission()
            if admission.capacity < n and await self._credit_drops():
                admission = self._admission()
            if admission.capacity < n:
                await self._throttle(admission.detail)
                return
            self.throttled = False
            if not self.queue and not await self._read_prompts():
                return
            self._start(self.queue.popleft())

    def _admission(self) -> Admission:
        in_flight = self.ctx.config.data.samples_per_prompt * sum(
            not g.publishing for g in self.groups.values())
        return self.hooks.staleness.admit(AdmissionState(
            trainer_version=max(0, self.weights.trainer_version - self.base_version),
            # Credits for drops of samples started before this producer joined may take the
            # count below what it has in flight; it asks as if those were all it held (a moment
            # of caution, exact again once they finish).
            num_started=max(self.num_started, in_flight), num_in_flight=in_flight,
            batch_size=self.ctx.config.trainer.batch_size,
            num_producers=self.num_producers, now_ms=int(time.time() * 1000),
            producer_rank=self.index))

    async def _credit_drops(self) -> bool:
        """Throttled: take back the slots of this producer's samples the trainer dropped since
        the last look (at most every DROPS_EVERY_S); whether any came back."""
        if time.monotonic() - self.drops_read_at < DROPS_EVERY_S:
            return False
        self.drops_read_at = time.monotonic()
        credited = await self.drops.read(self.progress.keys())
        self.num_started -= credited
        return credited > 0

    async def _read_prompts(self) -> bool:
        per_partition = max(2, 16 // max(len(self.progress), 1))  # prompts stay near their order
        for p, progress in self.progress.items():
            # a page of prompts all finished already (after a restart) is skipped at once
            while (room := min(per_partition, progress.room())) > 0:
                before = progress.next_read
                records = await self.log.read(self.ctx.streams.prompts, p, before,
                                              max_records=room)
                taken = progress.take(records)
                self.queue.extend(taken)
                if taken or progress.next_read == before:
                    break
        return bool(self.queue)

    def _start(self, record: Record) -> None:
        prompt = decode_event(record.value, "prompts")
        # Dataset prompts arrive as ids rendered by the driver (chat template applied), their
        # text in the metadata; a hook's prompts arrive as text, encoded here.
        tokens = (np.asarray(prompt.tokens, dtype=np.int32) if prompt.tokens is not None
                  else self.tokenizer.encode(prompt.text or "", bos=True))
        text = prompt_text(prompt.text, prompt.metadata)
        group_id = group_id_for(record.partition, record.offset)
        group = Group(record=record, prompt=prompt, tokens=tokens, text=text)
        self.groups[group_id] = group
        inp = RolloutInput(
            prompt_id=prompt.prompt_id, prompt_text=text, prompt_tokens=tokens,
            metadata=dict(prompt.metadata), num_samples=self.ctx.config.data.samples_per_prompt,
            params=lambda k: self._params(group_id, k), generate=self.client.generate,
            tokenizer=self.tokenizer, chat=lambda k: self.chat.session(
                self._params(group_id, k), name=sample_id_for(group_id, k)))
        group.task = asyncio.create_task(self._rollout(group_id, group, inp))
        self.tasks.add(group.task)
        group.task.add_done_callback(self.tasks.discard)
        self.num_started += inp.num_samples

    def _params(self, group_id: str, k: int) -> SamplingParams:
        """The recipe's sampling settings, seeded per (run seed, sample): replayable."""
        r = self.ctx.config.rollout
        return SamplingParams(
            temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
            max_new_tokens=r.max_new_tokens, stop_token_ids=self.stop_token_ids,
            seed=seed_from_request_id(f"{self.ctx.config.run.seed}/{sample_id_for(group_id, k)}"))

    async def _rollout(self, group_id: str, group: Group, inp: RolloutInput) -> None:
        samples = await self.rollout(inp)
        if len(samples) != inp.num_samples:
            raise ValueError(f"rollout {self.ctx.config.rollout.rollout!r} returned "
                             f"{len(samples)} samples for {inp.num_samples} requested")
        group.publishing = True
        await self.publish(group_id, group, samples)
        del self.groups[group_id]

    def _evaluate_if_due(self) -> None:
        if self.evaluation is not None and self.evaluation.due(self.engine.version):
            self.eval_task = asyncio.create_task(self._evaluate(self.engine.version))

    async def _evaluate(self, version: int) -> None:
        event = await self.evaluation.run(version)  # type: ignore[union-attr]
        await self.log.append(self.ctx.streams.events, encode_event(event),
                              key=self.producer_id.encode())

    def _raise_failed_rollouts(self) -> None:
        """A rollout function (or an evaluation) that raised is a bug: stop the producer with
        its error."""
        if self.eval_task is not None and self.eval_task.done():
            task, self.eval_task = self.eval_task, None
            task.result()
        for group in self.groups.values():
            if group.task is not None and group.task.done() and group.task.exception():
                raise group.task.exception()  # type: ignore[misc]

    async def _throttle(self, detail: str) -> None:
        if not self.throttled:  # one event per throttled stretch, not one per check
            self.throttled = True
            self.num_throttled += 1
            await self.log.append(self.ctx.streams.events, encode_event(Rejected(
                run_id=self.ctx.run_id, subject=self.producer_id, reason_code=THROTTLED,
                detail=detail)), key=self.producer_id.encode())

    async def publish(self, group_id: str, group: Group, results: list[RolloutSample]) -> None:
        rewards = await asyncio.gather(*(self._reward(group, res) for res in results))
        appends: list[Append] = []
        verdict = self._filter(group, results, rewards)
        if verdict is not None and not verdict.keep:
            self.num_started -= len(results)  # never trained: frees admission capacity
            event = Rejected(run_id=self.ctx.run_id, subject=group_id, reason_code=verdict.code,
                             detail=verdict.reason)
            appends.append(Append(stream=self.ctx.streams.events, value=encode_event(event)))
        else:
            reference = ([None] * len(results) if self.reference is None  # off the loop:
                         else await asyncio.to_thread(self.reference.score, results))
            samples = [self._sample(group_id, group, k, res, rew, ref) for k, (res, rew, ref)
                       in enumerate(zip(results, rewards, reference, strict=True))]
            data = encode_trajectories(samples_to_batch(samples))
            appends.append(Append(stream=self.ctx.streams.trajectories, value=data,
                                  key=group_id.encode(), headers=digest_headers(data)))
        async with self.publish_lock:
            progress = self.progress[group.record.partition]
            position = progress.finishing([group.record.offset])
            sp = StreamPartition(self.ctx.streams.prompts, group.record.partition)
            await self.log.transact(PRODUCER_GROUP, {sp: position}, appends)
            progress.finished([group.record.offset])
        if verdict is not None and not verdict.keep:
            self.num_filtered_groups += 1
        else:
            self.num_published_samples += len(results)
            self.num_generated_tokens += sum(len(r.response_tokens) for r in results)

    def _filter(self, group: Group, results: list[RolloutSample],
                rewards: list[RewardOutput]) -> FilterOutput | None:
        keep_fn = self.hooks.filter
        if keep_fn is None:
            return None
        return keep_fn(FilterInput(
            prompt_id=group.prompt.prompt_id, rewards=tuple(r.reward for r in rewards),
            finish_reasons=tuple(r.finish_reason for r in results),
            num_response_tokens=tuple(len(r.response_tokens) for r in results)))

    async def _reward(self, group: Group, result: RolloutSample) -> RewardOutput:
        """The reward, in a reward worker process with the recipe's timeout: a reward function
        that raises or hangs scores the sample 0 with its status, never stops the producer."""
        response = result.response_tokens
        if result.finish_reason == "stop":
            response = response[:-1]  # the stop token is not part of the answer
        out = await self.rewards.score(RewardInput(
            prompt_id=group.prompt.prompt_id, prompt_text=group.text,
            prompt_tokens=group.tokens, response_text=self.tokenizer.decode(response),
            response_tokens=result.response_tokens, finish_reason=result.finish_reason,
            metadata=dict(group.prompt.metadata)))
        token_rewards = out.token_rewards
        if token_rewards is not None and (len(token_rewards) != len(result.response_tokens)
                                          or not np.isfinite(token_rewards).all()):
            return RewardOutput(reward=0.0, status=(
                f"bad_token_rewards: {len(token_rewards)} values for "
                f"{len(result.response_tokens)} response tokens, or not finite"))
        return out

    def _sample(self, group_id: str, group: Group, k: int, res: RolloutSample,
                reward: RewardOutput, reference: np.ndarray | None = None) -> Sample:
        versions = res.response_versions
        return Sample(
            run_id=self.ctx.run_id, sample_id=sample_id_for(group_id, k), group_id=group_id,
            prompt_id=group.prompt.prompt_id, sample_index=k, producer_id=self.producer_id,
            policy_version=int(versions[0]) if len(versions) else self.engine.version,
            prompt_tokens=res.prompt_tokens, response_tokens=res.response_tokens,
            logprobs=res.logprobs, loss_mask=res.loss_mask,
            reward=float(reward.reward),
            reward_details=dict(reward.details) | dict(res.details) or None,
            finish_reason=res.finish_reason, seed=res.seed,
            started_at=res.started_at, finished_at=res.finished_at,
            response_versions=versions, routed_experts=res.routed_experts,
            moe_num_experts=None if res.routed_experts is None else self.engine.num_experts,
            reference_logprobs=reference,
            token_rewards=None if reward.token_rewards is None
            else np.asarray(reward.token_rewards, np.float32))
