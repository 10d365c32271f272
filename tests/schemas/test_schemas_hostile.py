"""Untrusted bytes: size caps, framing abuse and foreign streams end in a typed DecodeError."""

from __future__ import annotations

import struct

import numpy as np
import pyarrow as pa
import pytest

from streamrl.schemas import (
    DecodeError,
    DecodeLimits,
    SchemaIncompatibleError,
    TrajectoryDecodeError,
    decode_trajectories,
    encode_trajectories,
    samples_to_batch,
)
from streamrl.schemas.testing import make_group


def good_batch() -> pa.RecordBatch:
    return samples_to_batch(make_group(np.random.default_rng(30), 4))  # 4 x 96 response tokens


def ipc(batches: list[pa.RecordBatch], **options: object) -> bytes:
    sink = pa.BufferOutputStream()
    write_options = pa.ipc.IpcWriteOptions(**options)  # type: ignore[arg-type]
    with pa.ipc.new_stream(sink, batches[0].schema, options=write_options) as writer:
        for batch in batches:
            writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def reason(data: object, **kwargs: object) -> str:
    with pytest.raises(DecodeError) as info:
        decode_trajectories(data, **kwargs)  # type: ignore[arg-type]
    return info.value.reason_code


def test_good_bytes_from_any_buffer_type_decode() -> None:
    data = encode_trajectories(good_batch())
    for view in (data, bytearray(data), memoryview(data)):
        assert decode_trajectories(view).num_rows == 4


def test_non_bytes_and_oversized_messages_are_refused_unread() -> None:
    assert reason("not bytes") == "not_bytes"
    data = encode_trajectories(good_batch())
    assert reason(data, limits=DecodeLimits(max_message_bytes=len(data) - 1)) == "too_large"


def test_encoder_refuses_batches_readers_would_refuse_as_too_large() -> None:
    with pytest.raises(TrajectoryDecodeError) as info:
        encode_trajectories(good_batch(), limits=DecodeLimits(max_message_bytes=1024))
    assert info.value.reason_code == "too_large" and "split" in info.value.what


@pytest.mark.parametrize("data", [b"", b"\x00" * 64, b"\xff\xff\xff\xff" + b"\x7f" * 60,
                                  bytes(range(256)) * 4])
def test_garbage_is_a_decode_error(data: bytes) -> None:
    with pytest.raises(TrajectoryDecodeError):
        decode_trajectories(data)


def test_every_truncation_is_a_decode_error() -> None:
    data = encode_trajectories(good_batch())
    for cut in range(0, len(data), 97):
        with pytest.raises(DecodeError):
            decode_trajectories(data[:cut])


def test_compressed_bodies_are_refused_before_decompressing() -> None:
    # A zstd bomb: a few KiB on the wire that would inflate to 256 MiB of zeros.
    batch = good_batch()
    zeros = pa.array([np.zeros(64 << 20, np.uint8)], pa.list_(pa.uint8()))
    padded = batch.slice(0, 1).append_column("padding", zeros)
    data = ipc([padded], compression="zstd")
    assert len(data) < 64 << 10
    assert reason(data) == "compressed_body"


def test_two_record_batches_are_refused() -> None:
    batch = encode_trajectories(good_batch())  # stamps the schema marker
    two = ipc([decode_trajectories(batch)] * 2)
    assert reason(two) == "batch_count"


def test_huge_declared_list_length_is_refused_before_reading() -> None:
    data = encode_trajectories(good_batch())
    node = struct.pack("<qq", 4 * 96, 0)  # (length, null_count) of a response-token child node
    assert node in data
    forged = data.replace(node, struct.pack("<qq", 1 << 40, 0), 1)
    assert reason(forged) == "declared_length_too_large"


def test_huge_metadata_length_in_framing_is_a_decode_error() -> None:
    data = bytearray(encode_trajectories(good_batch()))
    data[4:8] = struct.pack("<i", 0x7FFFFFF0)  # the schema message's metadata length
    assert reason(bytes(data)) == "malformed_ipc"


def test_row_and_message_count_limits() -> None:
    data = encode_trajectories(good_batch())
    assert reason(data, limits=DecodeLimits(max_rows=3)) == "too_many_rows"
    assert reason(data, limits=DecodeLimits(max_ipc_messages=2)) == "too_many_messages"


def test_registered_extension_type_is_refused() -> None:
    batch = decode_trajectories(encode_trajectories(good_batch()))
    trace = pa.ExtensionArray.from_storage(pa.uuid(), pa.array([b"0" * 16] * 4, pa.binary(16)))
    with pytest.raises(SchemaIncompatibleError) as info:
        decode_trajectories(ipc([batch.append_column("trace", trace)]))
    assert info.value.reason_code == "extension_type"


def test_errors_pickle_across_processes() -> None:
    import pickle

    with pytest.raises(DecodeError) as info:
        decode_trajectories(b"junk")
    copy = pickle.loads(pickle.dumps(info.value))
    assert type(copy) is type(info.value)
    assert (copy.what, copy.where, copy.reason_code) == (
        info.value.what, info.value.where, info.value.reason_code)
