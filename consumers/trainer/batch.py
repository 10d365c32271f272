"""`TrainBatch`: trajectory rows turned into padded tensors for one teacher-forced forward.

Alignment. A sample is the token sequence x = prompt ++ response (P + R tokens). Sequence
position j feeds x[j] and its logits predict x[j + 1], so `targets[j] = x[j + 1]` and response
token i is predicted at position P - 1 + i. Everything recorded per response token lands there:

    position j       0 .. P-2    P-1     P     ..  P+R-2     P+R-1     (padding)
    tokens           prompt      p[P-1]  r[0]  ..  r[R-2]    r[R-1]    pad
    targets          prompt[1:]  r[0]    r[1]  ..  r[R-1]    pad       pad
    loss_mask        False       m[0]    m[1]  ..  m[R-1]    False     False
    old_logprobs     0           lp[0]   lp[1] ..  lp[R-1]   0         0
    versions         -1          v[0]    v[1]  ..  v[R-1]    -1        -1
    routing_mask     False       True    True  ..  True      False     False

MoE routing. The engine records, for response token i, the routing of the forward pass whose
logits sampled it: the pass that fed x[P - 1 + i] (the prefill's last prompt token for i = 0,
then decode steps). That is the routing at position P - 1 + i, the same column as the target.
Nothing is recorded for prompt positions 0..P-2 (the engine routed them in prefill but the
schema keeps only response routing), for the last position (its logits sample nothing) or for
padding. There `forced_routing` holds a placeholder (expert ids 0..top_k-1, valid but
meaningless) and `routing_mask` is False: pass both to `CausalLM` (`forced_routing=`,
`routing_mask=`) and it routes those positions freely. That is exact: the unrecorded prompt
positions precede every recorded position of their sequence, so their hidden states, hence their
routing, are what the engine had; the last position and padding influence no trained logit.

Order is the input order (log order), so a batch is a pure function of the rows it was formed
from. Rows are right-padded; positions count from 0 in each sequence (padding continues them).
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import numpy as np
import pyarrow as pa
import torch
from torch import Tensor

from streamrl.hooks.train import AdvantageInput
from streamrl.recipe.trainer import BatchConfig
from streamrl.schemas import Sample, batch_to_samples


class TrainBatch(msgspec.Struct, kw_only=True, frozen=True, eq=False):
    """Padded tensors of B rows holding N samples (B == N unless packed); see the module doc."""

    tokens: Tensor  # [B, S] int64 input ids
    positions: Tensor  # [B, S] int64, each token's position in its own sequence
    targets: Tensor  # [B, S] int64, the token the logits at this position predict
    loss_mask: Tensor  # [B, S] bool, True only where the target is a trained response token
    old_logprobs: Tensor  # [B, S] float32 sampling logprob of the target; 0 where not a response
    versions: Tensor  # [B, S] int64 version that sampled the target; -1 where not a response
    segments: Tensor  # [B, S] int64 index of the position's sample in [0, N); -1 = padding
    rewards: Tensor  # [N] float32
    group_ids: list[str]  # [N]
    sample_ids: list[str]  # [N]
    forced_routing: Tensor | None = None  # [B, S, num_moe_layers, top_k] int32, or None
    routing_mask: Tensor | None = None  # [B, S] bool, True where forced_routing was recorded
    # [B, S] float32 log ref(target) recorded by the producer, 0 where not a response; None
    # unless every sample has the column (`no_reference` lists those that lack it).
    reference_logprobs: Tensor | None = None
    no_reference: tuple[str, ...] = ()
    # [B, S] float32 per-token rewards at response targets, 0 elsewhere; None unless some sample
    # recorded `token_rewards`. A sample that did not has its reward on its last response token.
    token_rewards: Tensor | None = None

    @property
    def num_samples(self) -> int:
        return len(self.sample_ids)

    def advantage_input(self) -> AdvantageInput:
        """What an advantage estimator sees of this batch."""
        return AdvantageInput(rewards=self.rewards, group_ids=self.group_ids,
                              loss_mask=self.loss_mask, segments=self.segments,
                              token_rewards=self.token_rewards)

    def to(self, device: torch.device | str) -> TrainBatch:
        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device)
        return msgspec.structs.replace(self, **{
            name: move(getattr(self, name)) for name in (
                "tokens", "positions", "targets", "loss_mask", "old_logprobs", "versions",
                "segments", "rewards", "forced_routing", "routing_mask",
                "reference_logprobs", "token_rewards")})


def build_batch(rows: Sequence[pa.RecordBatch] | Sequence[Sample],
                config: BatchConfig | None = None) -> TrainBatch:
    """A `TrainBatch` from decoded v1 record batches or `Sample`s, in input order.

    Raises ValueError for an empty input, a sample without prompt tokens (its first response
    token would have no position to be predicted from), a sample_id seen twice (exactly-once
    training), routing shapes that differ between samples, or a sample longer than
    `pack_row_tokens`.
    """
    config = config or BatchConfig()
    samples = [s for r in rows for s in (batch_to_samples(r) if isinstance(r, pa.RecordBatch)
                                         else [r])]
    if not samples:
        raise ValueError("cannot build a batch from zero samples")
    _check_samples(samples)
    lengths = [len(s.prompt_tokens) + len(s.response_tokens) for s in samples]
    placement = _place(lengths, config.pack_row_tokens)  # per sample: (row, offset)
    num_rows = max(row for row, _ in placement) + 1
    fill = [0] * num_rows
    for (row, offset), n in zip(placement, lengths, strict=True):
        fill[row] = max(fill[row], offset + n)
    m = config.pad_to_multiple_of
    S = -(-max(fill) // m) * m
    B = num_rows

    tokens = np.full((B, S), config.pad_token_id, np.int64)
    targets = np.full((B, S), config.pad_token_id, np.int64)
    positions = np.zeros((B, S), np.int64)
    loss_mask = np.zeros((B, S), np.bool_)
    old = np.zeros((B, S), np.float32)
    versions = np.full((B, S), -1, np.int64)
    segments = np.full((B, S), -1, np.int64)
    routing_shape = next((s.routed_experts.shape[1:] for s in samples
                          if s.routed_experts is not None), None)
    routing = routing_mask = None
    if routing_shape is not None:
        placeholder = np.broadcast_to(np.arange(routing_shape[1], dtype=np.int32), routing_shape)
        routing = np.broadcast_to(placeholder, (B, S, *routing_shape)).copy()
        routing_mask = np.zeros((B, S), np.bool_)
    no_reference = tuple(s.sample_id for s in samples if s.reference_logprobs is None)
    reference = np.zeros((B, S), np.float32) if not no_reference else None
    token_rewards = (np.zeros((B, S), np.float32)
                     if any(s.token_rewards is not None for s in samples) else None)

    for i, (s, (row, o), n) in enumerate(zip(samples, placement, lengths, strict=True)):
        P, R = len(s.prompt_tokens), len(s.response_tokens)
        seq = np.concatenate([s.prompt_tokens, s.response_tokens]).astype(np.int64)
        tokens[row, o:o + n] = seq
        targets[row, o:o + n - 1] = seq[1:]
        positions[row, o:o + n] = np.arange(n)
        segments[row, o:o + n] = i
        # Response token k is predicted at sequence position P - 1 + k.
        resp = slice(o + P - 1, o + P - 1 + R)
        loss_mask[row, resp] = s.loss_mask
        old[row, resp] = s.logprobs
        versions[row, resp] = (s.response_versions if s.response_versions is not None
                               else s.policy_version)
        if routing is not None and routing_mask is not None and s.routed_experts is not None:
            routing[row, resp] = s.routed_experts
            routing_mask[row, resp] = True
        if reference is not None:
            reference[row, resp] = s.reference_logprobs
        if token_rewards is not None and R:
            if s.token_rewards is not None:
                token_rewards[row, resp] = s.token_rewards
            else:
                token_rewards[row, o + P + R - 2] = s.reward
    for row in range(B):
        # Padding continues the row's last positions, which causal attention already hides.
        start = fill[row]
        last = positions[row, start - 1] if start else -1
        positions[row, start:] = last + 1 + np.arange(S - start)

    return TrainBatch(
        tokens=torch.from_numpy(tokens), positions=torch.from_numpy(positions),
        targets=torch.from_numpy(targets), loss_mask=torch.from_numpy(loss_mask),
        old_logprobs=torch.from_numpy(old), versions=torch.from_numpy(versions),
        segments=torch.from_numpy(segments),
        rewards=torch.tensor([s.reward for s in samples], dtype=torch.float32),
        group_ids=[s.group_id for s in samples], sample_ids=[s.sample_id for s in samples],
        forced_routing=None if routing is None else torch.from_numpy(routing),
        routing_mask=None if routing_mask is None else torch.from_numpy(routing_mask),
        reference_logprobs=None if reference is None else torch.from_numpy(reference),
        no_reference=no_reference,
        token_rewards=None if token_rewards is None else torch.from_numpy(token_rewards))


def _check_samples(samples: list[Sample]) -> None:
    seen: set[str] = set()
    shape = None
    for s in samples:
        if s.sample_id in seen:
            raise ValueError(f"sample {s.sample_id!r} appears twice; a sample trains once")
        seen.add(s.sample_id)
        if len(s.prompt_tokens) == 0:
            raise ValueError(f"sample {s.sample_id!r} has no prompt tokens; its first response "
                             "token would have no position to be predicted from")
        R = len(s.response_tokens)
        if len(s.logprobs) != R or len(s.loss_mask) != R:
            raise ValueError(f"sample {s.sample_id!r}: logprobs and loss_mask must have one "
                             f"entry per response token ({R})")
        if s.routed_experts is not None:
            if s.routed_experts.shape[0] != R:
                raise ValueError(f"sample {s.sample_id!r}: routed_experts has "
                                 f"{s.routed_experts.shape[0]} rows for {R} response tokens")
            if shape is not None and s.routed_experts.shape[1:] != shape:
                raise ValueError(f"sample {s.sample_id!r}: routing shape [layers, top_k] = "
                                 f"{list(s.routed_experts.shape[1:])}, others have {list(shape)}")
            shape = s.routed_experts.shape[1:]


def _place(lengths: list[int], budget: int | None) -> list[tuple[int, int]]:
    """(row, offset) per sample: one row each, or first fit into rows of `budget` tokens."""
    if budget is None:
        return [(i, 0) for i in range(len(lengths))]
    used: list[int] = []
    out = []
    for i, n in enumerate(lengths):
        if n > budget:
            raise ValueError(f"sample {i} has {n} tokens, more than pack_row_tokens={budget}")
        row = next((r for r, u in enumerate(used) if u + n <= budget), len(used))
        if row == len(used):
            used.append(0)
        out.append((row, used[row]))
        used[row] += n
    return out
