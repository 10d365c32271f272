"""Record integrity: the producer's digest header is checked before decoding, and every list
column's shape travels in the Arrow field metadata for readers in any language."""

from __future__ import annotations

import struct

import numpy as np
import pyarrow as pa
import pytest

from streamrl.log import Record
from streamrl.records import decode_trajectory_record
from streamrl.schemas import TrajectoryDecodeError, encode_trajectories, samples_to_batch
from streamrl.schemas.integrity import DIGEST_HEADER, digest_headers, payload_digest
from streamrl.schemas.testing import MoeShape, make_group
from streamrl.schemas.trajectory import LIST_SHAPES, TRAJECTORY_SCHEMA


def flip_a_logprob_bit(data: bytes, batch: pa.RecordBatch) -> bytes:
    """`data` with the lowest mantissa bit of row 0's first logprob flipped: still a finite,
    negative float, so the record still decodes and would train."""
    value = struct.pack("<f", batch["logprobs"][0][0].as_py())
    assert data.count(value) == 1
    at = data.index(value)
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1:]


def record(value: bytes, headers: tuple = ()) -> Record:
    return Record(stream="r.trajectories", partition=0, offset=0, value=value, headers=headers)


def test_a_flipped_bit_that_still_decodes_is_refused_as_digest_mismatch() -> None:
    batch = samples_to_batch(make_group(np.random.default_rng(0), 2))
    data = encode_trajectories(batch)
    headers = digest_headers(data)
    assert decode_trajectory_record(record(data, headers)).equals(batch)
    flipped = flip_a_logprob_bit(data, batch)
    decode_trajectory_record(record(flipped))  # no header (an older writer): still decodes
    with pytest.raises(TrajectoryDecodeError) as caught:
        decode_trajectory_record(record(flipped, headers))
    assert caught.value.reason_code == "digest_mismatch"
    assert DIGEST_HEADER in str(caught.value)


def test_a_digest_of_another_algorithm_is_refused_not_skipped() -> None:
    data = encode_trajectories(samples_to_batch(make_group(np.random.default_rng(1), 1)))
    assert payload_digest(data).startswith(b"crc32c:") and len(payload_digest(data)) == 15
    with pytest.raises(TrajectoryDecodeError) as caught:
        decode_trajectory_record(record(data, ((DIGEST_HEADER, b"sha256:00"),)))
    assert caught.value.reason_code == "digest_unsupported"


def test_every_list_column_carries_its_shape_in_the_written_record() -> None:
    lists = {f.name for f in TRAJECTORY_SCHEMA if pa.types.is_list(f.type)}
    assert lists <= set(LIST_SHAPES), f"give these list columns a shape: {lists - set(LIST_SHAPES)}"
    group = make_group(np.random.default_rng(2), 2, moe=MoeShape(3, 2, 300))  # wide routing ids
    batch = samples_to_batch(group)
    for data in (encode_trajectories(batch),  # as producers write it, and a hand-built batch
                 encode_trajectories(pa.RecordBatch.from_arrays(batch.columns,
                                                                names=batch.schema.names))):
        schema = pa.ipc.open_stream(data).schema  # plain pyarrow, as another language reads it
        shapes = {f.name: (f.metadata or {}).get(b"streamrl.shape") for f in schema}
        assert shapes["routed_experts_wide"] == b"[num_response_tokens, moe_num_layers, moe_top_k]"
        assert shapes["response_tokens"] == b"[num_response_tokens]"
        assert shapes["prompt_tokens"] == b"[num_prompt_tokens]"
        assert all(shapes[name] for name in lists)
        assert shapes["reward"] is None

