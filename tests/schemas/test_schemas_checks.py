"""Each semantic rule: a broken row is refused with a stable reason_code and says where."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import msgspec
import numpy as np
import pyarrow as pa
import pytest

from streamrl.schemas import (
    DecodeLimits,
    Sample,
    TrajectoryDecodeError,
    decode_trajectories,
    encode_trajectories,
    samples_to_batch,
)
from streamrl.schemas.testing import MoeShape, make_group, replace_column

Mutation = Callable[[list[Sample]], pa.RecordBatch]


def samples() -> list[Sample]:
    return make_group(np.random.default_rng(20), 2) + make_group(
        np.random.default_rng(21), 2, moe=MoeShape(2, 2, 8))


def edit(row: int, **fields: object) -> Mutation:
    """Replace fields of one sample, then build the batch (the builder checks no semantics)."""
    def apply(rows: list[Sample]) -> pa.RecordBatch:
        rows[row] = msgspec.structs.replace(rows[row], **fields)
        return samples_to_batch(rows)
    return apply


def edit_token(row: int, name: str, token: int, value: object) -> Mutation:
    def apply(rows: list[Sample]) -> pa.RecordBatch:
        array = np.array(getattr(rows[row], name))
        array[token] = value
        rows[row] = msgspec.structs.replace(rows[row], **{name: array})
        return samples_to_batch(rows)
    return apply


def column(name: str, make: Callable[[pa.RecordBatch], pa.Array]) -> Mutation:
    def apply(rows: list[Sample]) -> pa.RecordBatch:
        batch = samples_to_batch(rows)
        return replace_column(batch, name, make(batch))
    return apply


def null_at(row: int) -> Callable[[pa.RecordBatch], pa.Array]:
    def make(batch: pa.RecordBatch) -> pa.Array:
        values = batch.column("reward").to_pylist()
        values[row] = None
        return pa.array(values, pa.float32())
    return make


def null_logprob(batch: pa.RecordBatch) -> pa.Array:
    rows = batch.column("logprobs").to_pylist()
    rows[1][4] = None
    return pa.array(rows, pa.list_(pa.float32()))


def finish(value: str) -> Callable[[pa.RecordBatch], pa.Array]:
    return lambda batch: pa.array([value] * batch.num_rows).dictionary_encode().cast(
        pa.dictionary(pa.int8(), pa.string()))


def both_routing(batch: pa.RecordBatch) -> pa.Array:
    return batch.column("routed_experts").cast(pa.list_(pa.uint16()))


def details(value: list[tuple[str, float]]) -> Callable[[pa.RecordBatch], pa.Array]:
    return lambda batch: pa.array([value] * batch.num_rows, pa.map_(pa.string(), pa.float32()))


NAN = float("nan")
CASES: list[tuple[str, Mutation, str, str]] = [
    ("required null", column("reward", null_at(2)), "null_required", "row 2, column 'reward'"),
    ("empty id", edit(1, sample_id=""), "empty_id", "row 1, column 'sample_id'"),
    ("duplicate id", lambda r: samples_to_batch([r[0], r[1], r[0]]), "duplicate_sample_id",
     "row 2, column 'sample_id'"),
    ("null in list", column("logprobs", null_logprob), "null_value",
     "row 1, column 'logprobs', token 4"),
    ("short logprobs", edit(2, logprobs=np.zeros(95, np.float32)), "length_mismatch",
     "row 2, column 'logprobs'"),
    ("short mask", edit(0, loss_mask=np.ones(97, bool)), "length_mismatch",
     "row 0, column 'loss_mask'"),
    ("short versions", edit(3, response_versions=np.full(3, 3, np.uint32)), "length_mismatch",
     "row 3, column 'response_versions'"),
    ("negative token", edit_token(1, "prompt_tokens", 7, -5), "token_out_of_range",
     "row 1, column 'prompt_tokens', token 7"),
    ("nan logprob", edit_token(3, "logprobs", 17, NAN), "nonfinite_float",
     "row 3, column 'logprobs', token 17"),
    ("inf logprob", edit_token(0, "logprobs", 0, -np.inf), "nonfinite_float",
     "row 0, column 'logprobs', token 0"),
    ("positive logprob", edit_token(2, "logprobs", 5, 0.25), "positive_logprob",
     "row 2, column 'logprobs', token 5"),
    ("inf reward", edit(1, reward=float("inf")), "nonfinite_float", "row 1, column 'reward'"),
    ("nan detail", column("reward_details", details([("ok", 1.0), ("bad", NAN)])),
     "nonfinite_float", "row 0, column 'reward_details', key 'bad'"),
    ("duplicate detail key", column("reward_details", details([("a", 1.0), ("a", 2.0)])),
     "duplicate_key", "row 0, column 'reward_details'"),
    ("old token version", edit_token(2, "response_versions", 9, 1), "version_order",
     "row 2, column 'response_versions', token 9"),
    ("time order", lambda r: edit(1, finished_at=r[1].started_at - timedelta(seconds=1))(r),
     "time_order", "row 1, column 'finished_at'"),
    ("timestamp range", column("started_at", lambda b: pa.array(
        [-1] + [0] * (b.num_rows - 1), pa.int64()).cast(pa.timestamp("us", tz="UTC"))),
     "timestamp_out_of_range", "row 0, column 'started_at'"),
    ("finish reason", column("finish_reason", finish("timeout")), "bad_finish_reason",
     "row 0, column 'finish_reason'"),
    ("both routing", column("routed_experts_wide", both_routing), "both_routing_columns",
     "row 2, column 'routed_experts_wide'"),
    ("routing without shape", column("moe_top_k", lambda b: pa.nulls(b.num_rows, pa.uint8())),
     "missing_moe_shape", "row 2, column 'moe_num_layers'"),
    ("routing shape", lambda r: edit(3, routed_experts=r[3].routed_experts[:-1])(r),
     "routing_shape_mismatch", "row 3, column 'routed_experts'"),
]


@pytest.mark.parametrize(("mutate", "code", "where"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_decoder_refuses_broken_rows_saying_where(mutate: Mutation, code: str, where: str) -> None:
    data = encode_trajectories(mutate(samples()), validate=False)
    with pytest.raises(TrajectoryDecodeError) as info:
        decode_trajectories(data)
    assert (info.value.reason_code, info.value.where) == (code, where)
    assert code in str(info.value) and where in str(info.value)


@pytest.mark.parametrize(("mutate", "code"), [(c[1], c[2]) for c in CASES[:8]],
                         ids=[c[0] for c in CASES[:8]])
def test_encoder_refuses_the_same_rows_before_publishing(mutate: Mutation, code: str) -> None:
    with pytest.raises(TrajectoryDecodeError) as info:
        encode_trajectories(mutate(samples()))
    assert info.value.reason_code == code


def test_vocab_size_bounds_token_ids() -> None:
    rows = make_group(np.random.default_rng(22), 4, vocab_size=1000)
    data = encode_trajectories(edit_token(2, "response_tokens", 11, 50_000)(rows))
    decode_trajectories(data, vocab_size=151_936)
    with pytest.raises(TrajectoryDecodeError) as info:
        decode_trajectories(data, vocab_size=32_000)
    assert info.value.reason_code == "token_out_of_range"
    assert info.value.where == "row 2, column 'response_tokens', token 11"
    assert "32000" in info.value.what


def test_rows_longer_than_the_limit_are_refused() -> None:
    data = encode_trajectories(samples_to_batch(samples()))
    with pytest.raises(TrajectoryDecodeError) as info:
        decode_trajectories(data, limits=DecodeLimits(max_tokens_per_row=64))
    assert info.value.reason_code == "too_long"
    assert info.value.where == "row 0, column 'response_tokens'"
