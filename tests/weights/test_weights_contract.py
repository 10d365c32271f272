"""The weight-transport contract (see streamrl/weights/base.py): the same tests against every
transport. Another process is a spawned child that shares nothing but the locator."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest
import torch
import weights_child

from streamrl.schemas.events import WeightVersionAnnounced
from streamrl.weights import (
    WeightDigestMismatch,
    WeightFormatError,
    WeightTransport,
    WeightTransportClosed,
    WeightTransportError,
    WeightVersionUnavailable,
    layout,
    open_transport,
    weights_digest,
)
from streamrl.weights.base import move_to
from streamrl.weights.digest import dtype_name, tensor_bytes

KINDS = ["file", "shm"]
Make = Callable[..., WeightTransport]


def state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """What a trainer publishes: fp32 and bf16 weights, an int64 buffer, a tied embedding,
    odd shapes (scalar, empty, non-contiguous) and a NaN whose payload must survive."""
    g = torch.Generator().manual_seed(seed)
    embed = torch.randn(64, 16, generator=g)
    bf16 = torch.randn(7, 5, generator=g).to(torch.bfloat16)
    bf16[0, 0] = float("nan")
    return {
        "model.embed_tokens.weight": embed,
        "lm_head.weight": embed,  # tied
        "model.layers.0.mlp.weight": bf16,
        "model.layers.0.attn.qkv": torch.randn(16, 48, generator=g).t(),  # non-contiguous
        "model.rotary.position_ids": torch.arange(33, dtype=torch.int64),  # a buffer
        "model.norm.eps": torch.tensor(1e-6, dtype=torch.float64),
        "model.mask": torch.rand(3, 3, generator=g) > 0.5,
        "model.empty": torch.empty(0, 4, dtype=torch.float16),
        "model.step": torch.tensor([seed], dtype=torch.int32),
    }


def assert_bit_identical(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(want)
    for name, t in want.items():
        assert (got[name].dtype, got[name].shape) == (t.dtype, t.shape), name
        assert bytes(tensor_bytes(got[name])) == bytes(tensor_bytes(t)), name


def segment_path(t: WeightTransport, locator: str) -> Path:
    return t._path_of(locator)  # type: ignore[attr-defined]


@pytest.fixture(params=KINDS)
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Make]:
    namespace = f"test-{uuid.uuid4().hex[:10]}"
    opened: list[WeightTransport] = []

    def factory(**options: object) -> WeightTransport:
        where = ({"directory": tmp_path / "weights"} if request.param == "file"
                 else {"namespace": namespace})
        t = open_transport(request.param, **where, **options)
        t.start()
        opened.append(t)
        return t

    yield factory
    for t in opened:
        t.close()
    leftovers = (os.listdir(tmp_path / "weights") if request.param == "file"
                 else [n for n in os.listdir("/dev/shm") if namespace in n])
    assert leftovers == []


@pytest.fixture(scope="module")
def child() -> Iterator[concurrent.futures.Executor]:
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
        yield pool


@pytest.mark.parametrize("zero_copy", [False, True])
def test_publish_then_load_is_bit_identical_and_keeps_ties(make: Make, zero_copy: bool) -> None:
    t = make()
    sd = state_dict()
    p = t.publish(3, sd)
    got = t.load(p.locator, expected_digest=p.digest, zero_copy=zero_copy)
    assert_bit_identical(got, sd)
    assert got["lm_head.weight"].data_ptr() == got["model.embed_tokens.weight"].data_ptr()
    assert (p.version, p.transport, p.locator.startswith(f"{t.name}://")) == (3, t.name, True)


def test_another_process_loads_the_same_bits(make: Make, child: concurrent.futures.Executor
                                             ) -> None:
    t = make()
    sd = state_dict(seed=1)
    p = t.publish(0, sd)
    out = child.submit(weights_child.load_in_child, t.name, p.locator, p.digest).result()
    assert out["digest"] == p.digest == weights_digest(sd)
    assert out["tensors"] == {n: (dtype_name(x.dtype), tuple(x.shape), bytes(tensor_bytes(x)))
                              for n, x in sd.items()}
    assert out["tied"]["lm_head.weight"] == out["tied"]["model.embed_tokens.weight"]


def test_digest_is_the_same_on_every_transport(tmp_path: Path) -> None:
    sd = state_dict(seed=2)
    published = []
    for kind in KINDS:
        options = {"file": {"directory": tmp_path}, "shm": {"namespace": uuid.uuid4().hex}}[kind]
        with open_transport(kind, **options) as t:
            p = t.publish(5, sd)
            published.append(p)
            assert weights_digest(t.load(p.locator)) == p.digest
    assert {p.digest for p in published} == {weights_digest(sd)}
    assert {p.num_bytes for p in published} == {sum(
        x.numel() * x.element_size() for n, x in sd.items() if n != "lm_head.weight")}


def test_a_flipped_payload_byte_is_a_digest_mismatch_naming_the_version(make: Make) -> None:
    t = make()
    p = t.publish(7, state_dict())
    path = segment_path(t, p.locator)
    with open(path, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        byte = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([byte[0] ^ 0x01]))
    where = re.escape(f"weight version 7 at {p.locator}")
    with pytest.raises(WeightDigestMismatch, match=where) as e:
        t.load(p.locator, expected_digest=p.digest)
    assert (e.value.version, e.value.expected) == (7, p.digest)


def test_a_damaged_header_or_truncated_segment_is_a_format_error(make: Make) -> None:
    t = make()
    p1 = t.publish(1, state_dict())
    p2 = t.publish(2, state_dict())
    with open(segment_path(t, p1.locator), "r+b") as f:
        f.seek(9)
        f.write(b"\xff")
    os.truncate(segment_path(t, p2.locator), 200)
    for p in (p1, p2):
        with pytest.raises(WeightFormatError, match=f"weight version {p.version} at "):
            t.load(p.locator, expected_digest=p.digest)


def test_retention_keeps_the_last_k_and_released_versions_fail_clearly(
    make: Make, child: concurrent.futures.Executor
) -> None:
    t = make(keep_last=2)
    published = [t.publish(v, state_dict(seed=v)) for v in range(5)]
    assert [p.version for p in t.retained] == [3, 4]
    for p in published[:3]:
        assert not segment_path(t, p.locator).exists()
    with pytest.raises(WeightVersionUnavailable, match=r"weight version 1 at .*released") as e:
        t.load(published[1].locator)
    assert e.value.released
    out = child.submit(weights_child.load_in_child, t.name, published[0].locator, None).result()
    assert (out["error"], out["released"]) == ("WeightVersionUnavailable", True)
    assert "weight version 0" in out["message"]
    never = published[4].locator.replace("v00000004", "v00000099")
    with pytest.raises(WeightVersionUnavailable, match="not found") as e:
        t.load(never)
    assert not e.value.released


def test_many_versions_in_sequence_each_load_their_own_tensors(make: Make) -> None:
    t = make(keep_last=3)
    for v in range(40):
        sd = {"w": torch.full((256,), float(v)), "step": torch.tensor(v)}
        p = t.publish(v, sd)
        assert_bit_identical(t.load(p.locator, expected_digest=weights_digest(sd)), sd)
    assert [p.version for p in t.retained] == [37, 38, 39]


def test_zero_copy_tensors_stay_valid_after_release_and_close(make: Make) -> None:
    t = make()
    sd = state_dict()
    p = t.publish(0, sd)
    got = t.load(p.locator, zero_copy=True)
    t.close()
    assert not segment_path(t, p.locator).exists()
    assert_bit_identical(got, sd)


def test_close_is_idempotent_and_ends_publishing(make: Make) -> None:
    t = make()
    p = t.publish(0, state_dict())
    t.close()
    t.close()
    with pytest.raises(WeightTransportClosed):
        t.publish(1, state_dict())
    with pytest.raises(WeightTransportClosed):
        t.load(p.locator)


def test_versions_must_increase_and_a_locator_is_never_reused(make: Make) -> None:
    t = make()
    t.publish(4, state_dict())
    with pytest.raises(ValueError, match="newer than"):
        t.publish(4, state_dict())
    with pytest.raises(ValueError, match="no tensors"):
        t.publish(5, {})
    # A second publisher with the same place (a restarted trainer) must not overwrite v4...
    restarted = make()
    with pytest.raises(WeightTransportError, match="already exists"):
        restarted.publish(4, state_dict(seed=9))
    # ...until it removes what the crashed one left behind.
    assert len(restarted.remove_stale()) == 1  # type: ignore[attr-defined]
    restarted.publish(4, state_dict(seed=9))


def test_remove_stale_clears_what_a_crashed_publisher_left(make: Make) -> None:
    crashed = make()
    published = [crashed.publish(v, state_dict()) for v in range(2)]
    torn = segment_path(crashed, published[0].locator).with_name(
        segment_path(crashed, published[1].locator).name.replace("v00000001", "v00000002")
        + ".tmp-4242-0badf00d")
    torn.write_bytes(b"half a segment")
    restarted = make()
    assert len(restarted.remove_stale()) == 3  # type: ignore[attr-defined]
    assert not torn.exists()
    with pytest.raises(WeightVersionUnavailable):
        restarted.load(published[1].locator)


def test_a_restarted_publisher_sweeps_what_a_killed_one_kept(make: Make) -> None:
    """A killed trainer's newest `keep_last` versions stay readable for the producers still
    loading them, and go once the restarted trainer's own versions replace them: no copy of the
    weights is left behind in /dev/shm per kill (kill campaign finding, 2026-12-08)."""
    killed = make(keep_last=2)
    published = [killed.publish(v, state_dict()) for v in range(4)]  # holds v2, v3; never closed
    directory = segment_path(killed, published[0].locator).parent

    def versions_on_disk() -> list[int]:
        return sorted(int(n.split("v")[-1][:8]) for n in os.listdir(directory)
                      if killed.prefix in n)  # type: ignore[attr-defined]

    assert versions_on_disk() == [2, 3]
    restarted = make(keep_last=2)
    restarted.discard_after(3)
    restarted.publish(4, state_dict(seed=4))
    assert versions_on_disk() == [3, 4]  # v3 may still be loading somewhere
    assert_bit_identical(restarted.load(published[3].locator), state_dict())
    restarted.publish(5, state_dict(seed=5))
    assert versions_on_disk() == [4, 5]
    killed._retained.clear()  # type: ignore[attr-defined]  # it died holding them


def test_remove_stale_spares_other_runs_segments() -> None:
    with open_transport("shm", namespace=f"a{uuid.uuid4().hex[:8]}") as a, \
            open_transport("shm", namespace=f"{a.namespace}-b") as ab:  # type: ignore[attr-defined]
        p = ab.publish(0, state_dict())
        assert a.remove_stale() == []  # type: ignore[attr-defined]
        assert_bit_identical(ab.load(p.locator), state_dict())


def test_a_failed_publish_leaves_no_partial_segment(make: Make,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    t = make()
    with pytest.raises(TypeError, match="dense"):
        t.publish(0, {"a": torch.ones(2), "s": torch.ones(2, 2).to_sparse()})

    def disk_full(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(layout, "_pwrite_all", disk_full)
    with pytest.raises(WeightTransportError, match=r"weight version 0 at .*No space left"):
        t.publish(0, state_dict())
    assert t.retained == ()
    directory = t.directory  # type: ignore[attr-defined]
    assert [n for n in os.listdir(directory) if n.startswith(t.prefix)] == []  # type: ignore


def test_locators_of_another_transport_or_outside_the_store_are_refused(make: Make) -> None:
    t = make()
    for bad in ("nccl://group/3", f"{t.name}://../../etc/passwd", f"{t.name}://relative/v1"):
        with pytest.raises(ValueError):
            t.load(bad)


def test_published_announces_a_valid_log_event(make: Make) -> None:
    p = make().publish(2, state_dict())
    event = p.announce(run_id="run1", parent=1, batch_ids=("b7",))
    wire = msgspec.msgpack.encode(event)
    back = msgspec.msgpack.decode(wire, type=WeightVersionAnnounced)
    assert (back.version, back.digest, back.locator, back.transport, back.num_bytes) == (
        2, p.digest, p.locator, p.transport, p.num_bytes)


def test_move_to_device_keeps_ties_and_values() -> None:
    sd = state_dict()
    moved = move_to(sd, torch.device("cpu"))
    assert_bit_identical(moved, sd)
    assert moved["lm_head.weight"].data_ptr() == moved["model.embed_tokens.weight"].data_ptr()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_publish_from_and_load_onto_a_cuda_device(make: Make) -> None:
    t = make()
    sd = state_dict()
    on_gpu = {name: x.cuda() for name, x in sd.items()}
    on_gpu["lm_head.weight"] = on_gpu["model.embed_tokens.weight"]
    p = t.publish(0, on_gpu)
    assert p.digest == weights_digest(sd)
    got = t.load(p.locator, expected_digest=p.digest, device="cuda")
    assert all(x.is_cuda for x in got.values())
    assert got["lm_head.weight"].data_ptr() == got["model.embed_tokens.weight"].data_ptr()
    assert_bit_identical({name: x.cpu() for name, x in got.items()}, sd)
