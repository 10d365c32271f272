"""The process-group weight transport over gloo on CPU: the same code path NCCL takes across GPUs
(only the backend and the device of the buffers differ). Three real processes: rank 0 the
trainer, ranks 1 and 2 engines."""

from __future__ import annotations

import multiprocessing as mp
import queue
import socket

import pytest
import torch

from streamrl.weights import WeightVersionUnavailable
from streamrl.weights.broadcast import BroadcastTransport, GroupConfig
from streamrl.weights.buckets import Manifest, ManifestMismatch, expected_names, pack, unpack
from tests.multigpu import ranks

CTX = mp.get_context("spawn")


def free_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def collect(results: mp.Queue, n: int, procs: list) -> list[tuple]:
    out = []
    for _ in range(n):
        try:
            out.append(results.get(timeout=120))
        except queue.Empty:
            pytest.fail(f"ranks stopped reporting after {out}")
        assert out[-1][2] != "error", out[-1][3]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0, f"{p.name} exited with {p.exitcode}"
    return out


def test_bucketing_round_trips_tensors_larger_than_a_bucket() -> None:
    w = ranks.weights(7)
    m = Manifest.of(w, bucket_bytes=ranks.BUCKET_BYTES)
    big = next(e for e in m.entries if e.name == "layers.0.w")
    assert big.num_bytes > m.bucket_bytes and m.num_buckets >= 6
    stream = torch.empty(m.total_bytes, dtype=torch.uint8)
    staging = torch.empty(m.bucket_bytes, dtype=torch.uint8)
    for i in range(m.num_buckets):  # bucket by bucket, through one reused staging buffer
        begin, end = m.bucket(i)
        stream[begin:end] = pack(m, w, i, staging)
    got = unpack(m, stream)
    assert ranks.bit_identical(got, w)
    assert got["lm_head.weight"].data_ptr() == got["embed.weight"].data_ptr()  # tied stays tied
    assert all(e.offset % 64 == 0 for e in m.entries)


def test_a_manifest_names_what_differs_from_the_model() -> None:
    m = Manifest.of(ranks.weights(1))
    expected = expected_names(ranks.weights(1, wrong_shape=True))
    expected["extra.bias"] = ("float32", (3,))
    with pytest.raises(ManifestMismatch, match=r"missing 'extra.bias'.*'layers.0.w': sent "
                                               r"float32\[100, 50\], expected float32\[100, 51\]"):
        m.check(expected, where="rank 1")
    m.check(expected_names(ranks.weights(2)), where="rank 1")  # same shapes: fine


def test_bad_group_settings_are_refused_clearly() -> None:
    with pytest.raises(ValueError, match="not host:port"):
        GroupConfig(address="localhost", world_size=2, rank=0)
    with pytest.raises(ValueError, match="world_size >= 2"):
        GroupConfig(world_size=3, rank=3)
    with pytest.raises(ValueError, match="STREAMRL_WEIGHTS_GROUP"):
        GroupConfig.from_env({})
    with pytest.raises(ValueError, match="only rank 0 sends"):
        BroadcastTransport(GroupConfig(world_size=2, rank=1)).publish(1, ranks.weights(1))


def test_versions_reach_every_engine_bit_identical_and_a_late_joiner_gets_the_next() -> None:
    """Version 1 is published while rank 2 has not joined (nobody gets it); versions 2-4 reach
    both engines bit-identical, tied tensors tied, digests equal to the announced ones."""
    address, results = free_address(), CTX.Queue()
    announce = [CTX.Queue(), CTX.Queue()]
    sender = CTX.Process(target=ranks.sender, name="rank0",
                         args=(address, 3, [1], [2, 3, 4], announce, results))
    r1 = CTX.Process(target=ranks.receiver, name="rank1",
                     args=(address, 3, 1, 4, announce[0], results, True))
    r2 = CTX.Process(target=ranks.receiver, name="rank2",
                     args=(address, 3, 2, 4, announce[1], results, False))
    sender.start()
    r1.start()
    early = results.get(timeout=120)
    assert early[2] != "error", early[3]
    assert early[:2] == ("sender", 1)
    assert results.get(timeout=120) == ("sender", -1, "early-done", 1)  # undelivered
    r2.start()  # joins late
    out = collect(results, 3 + 2 * 4, [sender, r1, r2])
    sent = {v: d for who, v, what, d in out if who == "sender" and what == "published"}
    assert sorted(sent) == [2, 3, 4]
    for rank in (1, 2):
        got = {v: (what, x) for who, v, what, x in out if who == rank}
        assert got[1][0] == WeightVersionUnavailable.__name__, got[1]
        assert "published before this rank joined the weight group" in got[1][1]
        for v in (2, 3, 4):
            assert got[v] == ("loaded", (True, True)), (rank, v, got[v])


def test_an_engine_with_another_model_is_refused_clearly_on_both_sides() -> None:
    address, results = free_address(), CTX.Queue()
    announce = [CTX.Queue(), CTX.Queue()]
    procs = [
        CTX.Process(target=ranks.sender, name="rank0",
                    args=(address, 3, [], [1, 2], announce, results)),
        CTX.Process(target=ranks.receiver, name="rank1",
                    args=(address, 3, 1, 2, announce[0], results)),
        CTX.Process(target=ranks.receiver, name="rank2",
                    args=(address, 3, 2, 2, announce[1], results, True, True)),
    ]
    for p in procs:
        p.start()
    out = collect(results, 1 + 2 + 2 * 2, procs)  # early-done, 2 versions x 3 ranks
    for v in (1, 2):  # every version is refused; the group stays usable and closes cleanly
        sender = next(x for x in out if x[0] == "sender" and x[1] == v)
        assert sender[2] == "mismatch" and "engine rank(s) [2]" in sender[3]
        own = next(x for x in out if x[0] == 2 and x[1] == v)
        assert own[2] == "ManifestMismatch" and "'layers.0.w': sent float32[100, 50], " \
            "expected float32[100, 51]" in own[3]
        other = next(x for x in out if x[0] == 1 and x[1] == v)
        assert other[2] == "ManifestMismatch" and "refused by engine rank(s) [2]" in other[3]
