"""`Scheduler`: which sequences decode, which prompt tokens get prefilled, and who holds which
KV blocks, one step at a time. Host-side bookkeeping only; `TorchEngine.step` runs the plan.

    plan = scheduler.schedule()
        1. every running sequence gets the block its next token's k/v goes into; when none
           is free, the most recently admitted sequence is preempted (its blocks freed, its
           tokens kept) until one is: preemption by recompute
        2. prefill chunks, oldest first, within the step's token budget
           (`max_step_tokens` minus one token per decoding sequence): chunked prefill
        3. preempted sequences, then queued requests (FIFO), join while a slot and the blocks
           for their prefill are free; a sample whose prompt another sequence already holds
           shares that prompt's full blocks and copies the one holding its last token, then
           prefills only that last token: prefix sharing; any other request holds the cached
           blocks of its longest full-block prefix that a finished (or preempted) sequence
           left behind and prefills only the rest: prefix caching
    engine: decode plan.decode, prefill plan.chunks (sampling the first token where
            `chunk.sample`), then `finish` each sequence that ended

A preempted sequence keeps its slot (its tokens, logprobs and uniforms stay in the slot
buffers) and gives back only its blocks; on resume its k/v for positions [0, length - 1) are
recomputed by prefill and decoding goes on where it stopped, with the same per-request
uniforms, so its output is what it would have been unpreempted (up to the fp32 noise of a
prefill's k/v versus a decode's). A sequence preempted before its first token starts over.

Blocks of a shared prompt are written once, by the sequence that prefilled the prompt, before
anyone shares them, and never again: each sample's own writes start at the prompt's last
position, which lies in its private (copied) block.

Prefix cache (`BlockPool.register`/`lookup`): when a sequence finishes, its blocks whose every
position has final k/v are registered under their hash-chain keys. That is positions
[0, length - 1): the last sampled token's k/v is never written (no decode ran on it). A
preempted sequence registers its prompt's full blocks the same way, so its resume may find
them. A new request looks up the keys of its prompt's full blocks, holds the longest cached
run of them, and prefills from there, always at least its last token (whose logits sample the
first response token; a resume's last position, which turns its decoding back on). So turn
k+1 of a conversation (its prompt = turn k's prompt + response + new context) prefills only
what turn k did not leave in full blocks. Cached blocks nobody holds are evictable: the pool
reclaims them, least recently released first, before anyone is preempted. Weight updates
`clear_prefix_cache()`: keys are forgotten, the within-group holders too, and a sequence whose
k/v were computed partly before the update (`epoch`) never registers its blocks.
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

import numpy as np

from streamrl.producers.engine.blocks import BlockPool, chain_keys


class Seq:
    """One request from admission to finish."""

    __slots__ = ("_keys", "blocks", "computed", "entry", "epoch", "key", "length", "order",
                 "prompt", "prompt_len", "salt", "sampled", "slot", "target")

    def __init__(self, entry: object, prompt: np.ndarray, salt: bytes = b"") -> None:
        self.entry = entry  # the engine's own record of the request
        self.prompt = prompt  # [P] int32 token ids
        self.salt = salt  # what else the k/v depend on (a LoRA adapter's id); b"" for none
        self.key = prompt.tobytes() + salt  # samples of one prompt share its blocks
        prompt_len = len(prompt)
        self.prompt_len = prompt_len
        self.epoch = 0  # the scheduler's cache epoch when its k/v started being computed
        self._keys: list[bytes] | None = None
        self.slot = -1  # -1 while queued
        self.blocks: list[int] = []  # block_table row: block of positions [i*bs, (i+1)*bs)
        self.computed = 0  # positions [0, computed) have k/v in the cache
        self.target = prompt_len  # prefill runs until computed == target
        self.length = prompt_len  # tokens so far (prompt + response), as the slot buffers'
        self.sampled = False  # the first response token exists
        self.order = 0  # admission order; the latest admitted is preempted first

    def keys(self, block_size: int) -> list[bytes]:
        """Prefix-cache keys of the prompt's full blocks, computed once (a request waiting for
        blocks looks them up every step)."""
        if self._keys is None:
            self._keys = chain_keys(self.prompt, self.salt, block_size,
                                    self.prompt_len // block_size)
        return self._keys

    @property
    def running(self) -> bool:
        return self.slot >= 0 and self.computed >= self.target and bool(self.blocks)


class Chunk(NamedTuple):
    slot: int
    start: int  # prefill positions [start, end) of the sequence in `slot`
    end: int
    done: bool  # the sequence's prefill is complete after this chunk: it decodes from now on
    sample: bool  # ... and its prompt just completed: sample the first response token


class Plan(NamedTuple):
    decode: list[int]  # slots that decode one token, ascending
    chunks: list[Chunk]
    admitted: list[Seq]  # newly given a slot: the engine fills their slot buffers first
    tables: dict[int, list[int]]  # slot -> its new block-table row (changed this step)
    copies: list[tuple[int, int]]  # (source block, destination block) copied before prefill
    preempted: list[int]  # slots whose sequences lost their blocks (and stop decoding)


class Scheduler:
    def __init__(self, pool: BlockPool, *, block_size: int, num_slots: int,
                 max_step_tokens: int, share_prefixes: bool, cache_prefixes: bool = False
                 ) -> None:
        self.pool, self.block_size = pool, block_size
        self.max_step_tokens, self.share_prefixes = max_step_tokens, share_prefixes
        self.cache_prefixes = cache_prefixes
        self._epoch = 0  # bumped by clear_prefix_cache
        self.slots: list[Seq | None] = [None] * num_slots
        self.waiting: deque[Seq] = deque()  # queued requests, FIFO
        self.preempted: deque[Seq] = deque()  # hold a slot, no blocks; resume first
        self._holders: dict[bytes, list[Seq]] = {}  # prompt -> sequences holding its k/v
        self._prefilling: dict[bytes, Seq] = {}  # prompt -> the sequence prefilling it now
        self._completing: list[Seq] = []  # prompt prefilled by this step's forward: holders next
        self._order = 0
        self.num_prefill_tokens = 0
        """Prompt (and recomputed) tokens prefilled so far."""
        self.num_cached_prefix_tokens = 0
        """Context tokens whose k/v were reused instead of prefilled: a sibling's prompt
        (prefix sharing) or cached blocks (prefix caching)."""
        self.num_preemptions = 0
        self.max_running = 0
        """Most sequences holding blocks at once (resident in the KV cache)."""

    def add(self, seq: Seq) -> None:
        self.waiting.append(seq)

    def busy(self) -> list[Seq]:
        return [s for s in self.slots if s is not None]

    def schedule(self) -> Plan:
        plan = Plan([], [], [], {}, [], [])
        for seq in self._completing:  # their prompt's k/v were written by the last step
            if self._prefilling.get(seq.key) is seq:
                del self._prefilling[seq.key]
            if seq.blocks:
                self._holders.setdefault(seq.key, []).append(seq)
        self._completing.clear()
        self._grow_running(plan)
        budget = max(self.max_step_tokens - len(plan.decode), 0)
        in_prefill = sorted((s for s in self.busy() if s.blocks and not s.running),
                            key=lambda s: s.order)
        for seq in in_prefill:
            budget = self._chunk(seq, budget, plan)
        budget = self._admit(self.preempted, budget, plan, resume=True)
        self._admit(self.waiting, budget, plan, resume=False)
        self.max_running = max(self.max_running, sum(bool(s.blocks) for s in self.busy()))
        return plan

    def finish(self, slot: int, response: np.ndarray | None = None) -> Seq:
        """The sequence in `slot` ended (or was aborted): free its slot and blocks. With its
        `response` tokens, its blocks of final k/v stay cached for later prefixes."""
        seq = self.slots[slot]
        assert seq is not None, f"slot {slot} holds no sequence"
        if response is not None and seq.blocks:
            self._register(seq, np.concatenate([seq.prompt, response.astype(np.int32)]))
        self._drop_blocks(seq)
        self.slots[slot] = None
        if seq in self.preempted:
            self.preempted.remove(seq)
        return seq

    def clear_prefix_cache(self) -> None:
        """New weights: no k/v computed before now serves a request admitted from now on."""
        self._epoch += 1
        self.pool.clear_cache()
        self._holders.clear()
        self._prefilling.clear()
        self._completing.clear()

    def _register(self, seq: Seq, tokens: np.ndarray) -> None:
        """Cache `seq`'s full blocks of final k/v among `tokens` (its first ones)."""
        if not self.cache_prefixes or seq.epoch != self._epoch:
            return
        written = seq.length - 1 if seq.running else seq.computed
        bs = self.block_size
        n = min(written, len(tokens)) // bs
        self.pool.register(seq.blocks[:n], chain_keys(tokens, seq.salt, bs, n, seq.keys(bs)))

    def _grow_running(self, plan: Plan) -> None:
        """Step 1: a block for each running sequence's next k/v, preempting the newest."""
        for seq in sorted((s for s in self.busy() if s.running), key=lambda s: s.order):
            if not seq.blocks:  # preempted below, while making room for an older one
                continue
            while (seq.length - 1) // self.block_size >= len(seq.blocks):
                new = self.pool.allocate(1)
                if new is None:
                    self._preempt_newest(plan)
                    if not seq.blocks:
                        break  # it was the newest itself
                    continue
                seq.blocks += new
                plan.tables[seq.slot] = seq.blocks
            if seq.blocks:
                plan.decode.append(seq.slot)
                seq.length += 1  # the token this decode samples
        plan.decode.sort()

    def _preempt_newest(self, plan: Plan) -> None:
        victim = max((s for s in self.busy() if s.blocks), key=lambda s: s.order)
        self._register(victim, victim.prompt)  # its resume may find them still cached
        self._drop_blocks(victim)
        victim.computed = 0
        victim.target = victim.length - 1 if victim.sampled else victim.prompt_len
        self.preempted.appendleft(victim)
        plan.tables[victim.slot] = []
        plan.preempted.append(victim.slot)
        if victim.slot in plan.decode:
            plan.decode.remove(victim.slot)
        self.num_preemptions += 1

    def _drop_blocks(self, seq: Seq) -> None:
        self.pool.release(seq.blocks)
        seq.blocks = []
        holders = self._holders.get(seq.key)
        if holders is not None and seq in holders:
            holders.remove(seq)
            if not holders:
                del self._holders[seq.key]
        if self._prefilling.get(seq.key) is seq:
            del self._prefilling[seq.key]

    def _chunk(self, seq: Seq, budget: int, plan: Plan) -> int:
        """Plan the next prefill chunk of `seq` within `budget`; returns what is left."""
        n = min(seq.target - seq.computed, budget)
        if n <= 0:
            return budget
        start, seq.computed = seq.computed, seq.computed + n
        done = seq.computed == seq.target
        plan.chunks.append(Chunk(seq.slot, start, seq.computed, done, done and not seq.sampled))
        self.num_prefill_tokens += n
        if done:
            if not seq.sampled:
                seq.sampled, seq.length = True, seq.prompt_len + 1  # its first response token
            if seq.target >= seq.prompt_len and seq.epoch == self._epoch:
                self._completing.append(seq)
        return budget - n

    def _admit(self, queue: deque[Seq], budget: int, plan: Plan, *, resume: bool) -> int:
        """Steps 3: start sequences from `queue` in order while slots, blocks and budget last.
        A sample whose prompt is being prefilled right now waits for it, keeping a slot: later
        prompts go ahead only into the slots its waiting siblings leave free. Without that
        reservation every slot went to the first sample of a different prompt and each group
        finished only in the last round, all groups at once (a producer then published nothing
        for a whole batch's time, and the trainer went stale waiting)."""
        deferred: list[Seq] = []
        while queue and budget > 0:
            seq = queue[0]
            if not resume and self.slots.count(None) <= len(deferred):
                break
            if self.share_prefixes and not seq.sampled and seq.key in self._prefilling:
                deferred.append(queue.popleft())
                continue
            if not self._take_blocks(seq, plan):
                break  # not enough free blocks: wait for running sequences to finish
            queue.popleft()
            if not resume:
                seq.slot = self.slots.index(None)
                self.slots[seq.slot] = seq
                plan.admitted.append(seq)
            self._order += 1
            seq.order = self._order
            plan.tables[seq.slot] = seq.blocks
            budget = self._chunk(seq, budget, plan)
        queue.extendleft(reversed(deferred))
        return budget

    def _take_blocks(self, seq: Seq, plan: Plan) -> bool:
        """Blocks for `seq`'s prefill: shared from a holder of its prompt where possible, else
        the cached blocks of its longest full-block prefix and fresh ones for the rest."""
        bs = self.block_size
        seq.epoch = self._epoch
        holders = self._holders.get(seq.key) if self.share_prefixes and not seq.sampled else None
        if holders:
            last = (seq.prompt_len - 1) // bs  # the block of the prompt's last token: private
            source = holders[0]
            new = self.pool.allocate(1)
            if new is None:
                return False
            shared = source.blocks[:last]
            self.pool.hold(shared)
            seq.blocks = shared + new
            plan.copies.append((source.blocks[last], new[0]))
            seq.computed, seq.target = seq.prompt_len - 1, seq.prompt_len
            self.num_cached_prefix_tokens += seq.prompt_len - 1
            return True
        cached: list[int] = []
        if self.share_prefixes and self.cache_prefixes:
            # Full prompt blocks only (a resume's response tokens are on the device), and
            # never the target's last position: prefilling it samples or turns decoding on.
            n = min(seq.prompt_len, seq.target - 1) // bs
            cached = self.pool.lookup(seq.keys(bs)[:n])
            self.pool.hold(cached)
        new = self.pool.allocate(-(-seq.target // bs) - len(cached))
        if new is None:
            self.pool.release(cached)
            return False
        seq.blocks, seq.computed = cached + new, len(cached) * bs
        self.num_cached_prefix_tokens += seq.computed
        if self.share_prefixes and not seq.sampled:
            self._prefilling[seq.key] = seq
        return True
