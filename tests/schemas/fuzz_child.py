"""Fuzz child: decode mutated trajectory messages and print per-outcome counts as one JSON line.

Runs in its own process so a segfault or abort inside pyarrow shows up as a non-zero exit code
instead of killing the test runner. Every message is mutated by its own seeded RNG, so a failure
reproduces alone:

    PYTHONPATH=. python tests/schemas/fuzz_child.py --seed 0 --start 417 --count 1
"""

from __future__ import annotations

import argparse
import collections
import faulthandler
import json
import random
import resource
import struct
import sys
from collections.abc import Callable

import msgspec
import numpy as np
import pyarrow as pa

from streamrl.schemas import (
    TRAJECTORY_SCHEMA,
    DecodeError,
    batch_to_samples,
    decode_trajectories,
    encode_trajectories,
    samples_to_batch,
)
from streamrl.schemas.testing import MoeShape, make_group

HUGE_INT32 = (0x7FFFFFFF, 0x7FFFFFF8, -1, -8, 1 << 30, 0x10000)
HUGE_INT64 = (1 << 31, 1 << 32, 1 << 40, 1 << 62, (1 << 63) - 1, -1, -(1 << 63))


def _ipc(batch: pa.RecordBatch, **options: object) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema,
                           options=pa.ipc.IpcWriteOptions(**options)) as writer:  # type: ignore[arg-type]
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def base_messages() -> list[bytes]:
    """Small valid messages of every shape, plus near-valid foreign ones to mutate."""
    rng = np.random.default_rng(1234)
    small = {"num_prompt_tokens": 6, "num_response_tokens": 10, "vocab_size": 1000}
    dense = samples_to_batch(make_group(rng, 3, **small))  # type: ignore[arg-type]
    moe = samples_to_batch(make_group(rng, 2, moe=MoeShape(3, 2, 64), **small))  # type: ignore[arg-type]
    wide = samples_to_batch(make_group(rng, 1, moe=MoeShape(2, 2, 999), **small))  # type: ignore[arg-type]
    packed = samples_to_batch([msgspec.structs.replace(  # top-k sets: routed_experts_packed
        s, moe_num_experts=e, routed_experts=np.argsort(rng.random((10, 3, e)), -1)[..., :k])
        for e, k in ((64, 4), (999, 6)) for s in make_group(rng, 1, **small)])  # type: ignore[arg-type]
    extra = dense.append_column("entropy", pa.array([[0.5]] * 3, pa.list_(pa.float32())))
    ext_field = pa.field("trace", pa.binary(4), metadata={"ARROW:extension:name": "x.evil"})
    evil = dense.append_column(ext_field, pa.array([b"abcd"] * 3, pa.binary(4)))
    index = dense.schema.get_field_index("reward")
    evil_v1 = dense.set_column(index, dense.schema.field(index).with_metadata(
        {"ARROW:extension:name": "arrow.bool8"}), dense.column(index))
    return [
        encode_trajectories(dense), encode_trajectories(moe), encode_trajectories(wide),
        encode_trajectories(packed),
        encode_trajectories(dense.slice(0, 0)), encode_trajectories(extra),
        encode_trajectories(dense.drop_columns(["reward_details", "routed_experts"])),
        _ipc(evil), _ipc(evil_v1),
        _ipc(dense.replace_schema_metadata({"streamrl.schema": "trajectory",
                                            "streamrl.schema_version": "2"})),
        _ipc(moe, compression="lz4"), _ipc(dense.replace_schema_metadata(None)),
    ]


def message_spans(data: bytes) -> list[tuple[int, int, int]]:
    """(frame start, metadata start, metadata end) of each IPC message in a valid stream."""
    spans, pos = [], 0
    for message in pa.ipc.MessageReader.open_stream(pa.py_buffer(data)):
        meta_len = struct.unpack_from("<i", data, pos + 4)[0]
        spans.append((pos, pos + 8, pos + 8 + meta_len))
        pos += 8 + meta_len + (message.body.size if message.body is not None else 0)
    return spans


def bit_flips(rng: random.Random, data: bytes, _: list[bytes]) -> bytes:
    out = bytearray(data)
    for _i in range(rng.choice((1, 1, 2, 4, 16))):
        at = rng.randrange(len(out))
        out[at] ^= 1 << rng.randrange(8)
    return bytes(out)


def body_flips(rng: random.Random, data: bytes, _: list[bytes]) -> bytes:
    """Flip bits inside message bodies only: offsets, validity bitmaps, values."""
    spans = message_spans(data)
    starts = [start for start, _m, _e in spans[1:]] + [len(data) - 8]  # 8: end-of-stream marker
    bodies = [(end, nxt) for (_s, _m, end), nxt in zip(spans, starts, strict=True) if nxt > end]
    out = bytearray(data)
    for _i in range(rng.choice((1, 2, 8))):
        lo, hi = rng.choice(bodies)
        at = rng.randrange(lo, hi)
        out[at] ^= 1 << rng.randrange(8)
    return bytes(out)


def truncate(rng: random.Random, data: bytes, _: list[bytes]) -> bytes:
    return data[:rng.randrange(len(data))]


def huge_lengths(rng: random.Random, data: bytes, _: list[bytes]) -> bytes:
    out = bytearray(data)
    start, meta_start, meta_end = rng.choice(message_spans(data))
    if rng.random() < 0.3:  # the framing's metadata-length prefix
        struct.pack_into("<i", out, start + 4, rng.choice(HUGE_INT32))
    else:  # an aligned 8-byte slot inside the flatbuffer: row counts, node and buffer lengths
        at = meta_start + 8 * rng.randrange((meta_end - meta_start) // 8)
        struct.pack_into("<q", out, at, rng.choice(HUGE_INT64))
    return bytes(out)


def garbage(rng: random.Random, _data: bytes, __: list[bytes]) -> bytes:
    noise = rng.randbytes(rng.randrange(2048))
    return (b"\xff\xff\xff\xff" + noise) if rng.random() < 0.5 else noise


def splice(rng: random.Random, data: bytes, bases: list[bytes]) -> bytes:
    other = rng.choice(bases)
    if rng.random() < 0.5:  # a second copy of the last messages: two record batches
        start = rng.choice(message_spans(data))[0]
        return data[:-8] + data[start:]
    return data[:rng.randrange(len(data))] + other[rng.randrange(len(other)):]


def unchanged(_rng: random.Random, data: bytes, __: list[bytes]) -> bytes:
    return data


MUTATIONS: list[Callable[[random.Random, bytes, list[bytes]], bytes]] = [
    bit_flips, bit_flips, body_flips, body_flips, truncate, huge_lengths, huge_lengths, garbage,
    splice, unchanged,
]


def outcome(data: bytes) -> str:
    try:
        batch = decode_trajectories(data)
    except DecodeError as exc:
        return f"{type(exc).__name__}:{exc.reason_code}"
    except BaseException as exc:
        return f"other:{type(exc).__name__}:{str(exc)[:80]}"
    try:  # a batch the decoder accepted must be fully usable
        batch.validate(full=True)
        assert batch.schema.equals(TRAJECTORY_SCHEMA, check_metadata=True)
        batch_to_samples(batch)
    except BaseException as exc:
        return f"other:accepted_but_unusable:{type(exc).__name__}:{str(exc)[:80]}"
    return "ok"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--count", type=int, default=1000)
    args = parser.parse_args()
    faulthandler.enable()
    # A decode that tries to allocate gigabytes fails here as MemoryError instead of swapping.
    resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))
    bases = base_messages()
    counts: collections.Counter[str] = collections.Counter()
    first_other: dict[str, int] = {}
    for index in range(args.start, args.start + args.count):
        rng = random.Random(args.seed * 1_000_003 + index)
        mutate = rng.choice(MUTATIONS)
        result = outcome(mutate(rng, rng.choice(bases), bases))
        counts[result] += 1
        if result.startswith("other:"):
            first_other.setdefault(result, index)
    json.dump({"counts": dict(counts), "first_other": first_other}, sys.stdout)


if __name__ == "__main__":
    main()
