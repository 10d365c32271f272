"""Realistic trajectory samples for tests and benchmarks in every package (seeded, no I/O).

    rng = np.random.default_rng(0)
    batch = samples_to_batch(make_group(rng, group_size=8, moe=MoeShape(48, 8, 128)))
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import numpy as np
import pyarrow as pa

from streamrl.schemas.sample import Sample
from streamrl.schemas.trajectory import FINISH_REASONS, NARROW_EXPERT_LIMIT

_T0 = datetime(2025, 1, 1, tzinfo=UTC)


class MoeShape(msgspec.Struct, frozen=True):
    num_layers: int
    top_k: int
    num_experts: int


def make_sample(rng: np.random.Generator, *, sample_index: int = 0, group_id: str = "g0",
                num_prompt_tokens: int = 48, num_response_tokens: int = 96,
                vocab_size: int = 151_936, policy_version: int = 3, moe: MoeShape | None = None,
                run_id: str = "run-test") -> Sample:
    """One sample whose weights changed mid-generation (the second half of the response was
    sampled by policy_version + 1), with a reward breakdown and, with `moe`, routed experts."""
    n = num_response_tokens
    versions = np.full(n, policy_version, np.uint32)
    versions[n // 2:] += 1
    routed = None
    if moe is not None:
        dtype = np.uint8 if moe.num_experts <= NARROW_EXPERT_LIMIT else np.uint16
        routed = rng.integers(0, moe.num_experts, (n, moe.num_layers, moe.top_k), dtype=dtype)
    started = _T0 + timedelta(milliseconds=int(rng.integers(0, 10_000)))
    return Sample(
        run_id=run_id, sample_id=f"{group_id}-s{sample_index}-{rng.integers(1 << 62):x}",
        group_id=group_id, prompt_id=f"p-{group_id}", sample_index=sample_index,
        producer_id="producer-0", policy_version=policy_version,
        prompt_tokens=rng.integers(0, vocab_size, num_prompt_tokens, dtype=np.int32),
        response_tokens=rng.integers(0, vocab_size, n, dtype=np.int32),
        logprobs=-rng.exponential(0.7, n).astype(np.float32),
        loss_mask=rng.random(n) > 0.05, response_versions=versions,
        reward=float(np.float32(rng.random())),
        reward_details={"correct": float(rng.integers(0, 2)), "format": 0.5},
        finish_reason=FINISH_REASONS[int(rng.integers(0, 2))],
        seed=int(rng.integers(0, 1 << 63)) * 2 + 1,  # exercises the top bit of uint64
        started_at=started, finished_at=started + timedelta(seconds=2, microseconds=17),
        routed_experts=routed)


def make_group(rng: np.random.Generator, group_size: int = 4, **kwargs: object) -> list[Sample]:
    """`group_size` samples of one prompt (shared group_id, sample_index 0..group_size-1)."""
    group_id = f"g{rng.integers(1 << 32):x}"
    return [make_sample(rng, sample_index=i, group_id=group_id, **kwargs)  # type: ignore[arg-type]
            for i in range(group_size)]


def replace_column(batch: pa.RecordBatch, name: str, values: pa.Array,
                   type_: pa.DataType | None = None) -> pa.RecordBatch:
    """`batch` with column `name` replaced (keeping its field unless `type_` is given); for
    building deliberately broken batches in tests."""
    index = batch.schema.get_field_index(name)
    field = batch.schema.field(index)
    return batch.set_column(index, field if type_ is None else field.with_type(type_), values)
