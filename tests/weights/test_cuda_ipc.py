"""The cuda_ipc transport: configuration and bad input on any machine (a manifest whose ring slot
moved on is refused before any CUDA call); on a GPU, a second process loads versions from the
ring, maps each slot once, is never handed overwritten bytes, and holds its slot until done."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch

from streamrl.weights import (
    TransportConfig,
    WeightDigestMismatch,
    WeightFormatError,
    WeightTransportError,
    WeightVersionUnavailable,
    open_transport,
    weights_digest,
)
from streamrl.weights.cuda_ring import Ring
from tests.helpers import REPO

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _ns() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


def test_ring_size_and_cast_come_from_the_transport_config(tmp_path: Path) -> None:
    t = TransportConfig(kind="cuda_ipc", namespace=_ns(), directory=str(tmp_path), slots=3,
                        dtype="bfloat16").open()
    assert (t.name, t.slots, t.dtype) == ("cuda_ipc", 3, "bfloat16")  # type: ignore[attr-defined]
    t.close()
    assert TransportConfig(kind="cuda_ipc", keep_last=4).open().slots == 4  # type: ignore
    with pytest.raises(ValueError, match=r"slots \(2\) must be >= keep_last \(3\)"):
        open_transport("cuda_ipc", keep_last=3, slots=2)
    with pytest.raises(ValueError, match="dtype 'bf16'"):
        open_transport("cuda_ipc", dtype="bf16")


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU, CPU tensors go onto it")
def test_without_a_gpu_publishing_names_the_transports_to_use_instead(tmp_path: Path) -> None:
    with open_transport("cuda_ipc", namespace=_ns(), directory=tmp_path) as t, \
            pytest.raises(ValueError, match="shm or file transport"):
        t.publish(1, {"w": torch.ones(3)})


def test_bad_locators_and_manifests_are_clear_errors(tmp_path: Path) -> None:
    with open_transport("cuda_ipc", directory=tmp_path) as t:
        with pytest.raises(ValueError, match="not a cuda_ipc locator"):
            t.load("cuda_ipc://../../etc/passwd")
        with pytest.raises(WeightVersionUnavailable):
            t.load("cuda_ipc://streamrl-x-v00000003.ipc")
        (tmp_path / "streamrl-x-v00000004.ipc").write_text("{not json")
        with pytest.raises(WeightFormatError, match="unreadable manifest"):
            t.load("cuda_ipc://streamrl-x-v00000004.ipc")
        (tmp_path / "streamrl-x-v00000005.ipc").write_text(json.dumps(
            {"version": 5, "ring": "../../etc", "slot": 0, "generation": 1, "layout": ""}))
        with pytest.raises(WeightFormatError, match="not a ring directory"):
            t.load("cuda_ipc://streamrl-x-v00000005.ipc")


def test_a_manifest_whose_slot_was_reused_is_unavailable_not_newer_bytes(tmp_path) -> None:
    """What a reader sees when it read a manifest just before the publisher reused the slot."""
    ring = Ring.create(tmp_path, "x", slots=2)
    generation = ring.begin_write(1)
    head = {"version": 7, "ring": ring.path.name, "slot": 1, "generation": generation,
            "layout": "", "handle": [], "gpu": "none", "nbytes": 0}
    (tmp_path / "streamrl-x-v00000007.ipc").write_text(json.dumps(head) + "\n[]")
    ring.begin_write(1)  # version 8 takes the slot
    with open_transport("cuda_ipc", directory=tmp_path) as t, pytest.raises(
            WeightVersionUnavailable,
            match=r"weight version 7 .*released.*slot 1 .* generation 2, not 1"):
        t.load("cuda_ipc://streamrl-x-v00000007.ipc")
    assert ring.holds() == []  # the failed reader holds nothing
    ring.remove()
    with open_transport("cuda_ipc", directory=tmp_path) as t, \
            pytest.raises(WeightVersionUnavailable, match="is gone"):
        t.load("cuda_ipc://streamrl-x-v00000007.ipc")


def test_remove_stale_clears_a_crashed_publishers_files_of_its_namespace_only(tmp_path) -> None:
    ns = _ns()
    crashed = Ring.create(tmp_path, ns, slots=2)
    other = Ring.create(tmp_path, f"{ns}-b", slots=2)
    (tmp_path / f"streamrl-{ns}-v00000001.ipc").write_text("{}")
    (tmp_path / f"streamrl-{ns}-b-v00000001.ipc").write_text("{}")
    with open_transport("cuda_ipc", namespace=ns, directory=tmp_path) as t:
        removed = t.remove_stale()  # type: ignore[attr-defined]
    assert sorted(p.name for p in removed) == sorted(
        [crashed.path.name, f"streamrl-{ns}-v00000001.ipc"])
    assert other.path.is_dir() and (tmp_path / f"streamrl-{ns}-b-v00000001.ipc").exists()


# A reader process: one command per stdin line ("load LOCATOR DIGEST", "done", "keep LOCATOR"),
# one JSON answer per line.
_CHILD = """
import sys, json, torch
from streamrl.weights import open_transport, WeightTransportError
t = open_transport("cuda_ipc", directory=sys.argv[1])
for line in sys.stdin:
    cmd, *args = line.split()
    try:
        if cmd == "load":
            got = t.load(args[0], expected_digest=args[1] if len(args) > 1 else None)
            print(json.dumps({"sums": {k: float(v.double().sum()) for k, v in got.items()},
                              "dtypes": {k: str(v.dtype) for k, v in got.items()},
                              "ptr": got["b"].data_ptr(), "mapped": len(t._mapped),
                              "cuda": all(v.is_cuda for v in got.values()),
                              "tied": got["b"].data_ptr() == got["b2"].data_ptr()}), flush=True)
            del got
        elif cmd == "done":
            t.done()
            print(json.dumps({"done": True}), flush=True)
    except WeightTransportError as e:
        print(json.dumps({"error": type(e).__name__, "message": str(e)}), flush=True)
"""


class Reader:
    def __init__(self, directory: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(directory)], cwd=REPO,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def __call__(self, *command: str) -> dict:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(" ".join(command) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        assert self.proc.stdin
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def _tensors(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator(device="cuda").manual_seed(seed)
    b = torch.randn(64, 32, device="cuda", generator=g)
    return {"a": torch.randn(7, 3, device="cuda", generator=g).to(torch.bfloat16), "b": b,
            "b2": b, "n": torch.arange(5, device="cuda") + seed}


@cuda
def test_another_process_loads_versions_from_slots_it_maps_once(tmp_path: Path) -> None:
    reader = Reader(tmp_path)
    try:
        with open_transport("cuda_ipc", namespace=_ns(), directory=tmp_path) as t:
            published, got = [], []
            for v in range(1, 5):
                sd = _tensors(v)
                p = t.publish(v, sd)
                assert p.digest == weights_digest({k: x.cpu() for k, x in sd.items()})
                sd["b"].add_(1.0)  # the trainer moves on: the published version must not
                got.append(reader("load", p.locator, p.digest))
                assert reader("done") == {"done": True}
                assert got[-1]["cuda"] and got[-1]["tied"]
                assert got[-1]["sums"]["b"] == pytest.approx(
                    float((sd["b"] - 1.0).double().sum()), rel=1e-6)
                published.append(p)
            # Two slots, four versions: each slot opened once, then reused in place.
            assert [g["mapped"] for g in got] == [1, 2, 2, 2]
            assert got[0]["ptr"] == got[2]["ptr"] != got[1]["ptr"] == got[3]["ptr"]
            gone = reader("load", published[1].locator)  # v2's slot now holds v4
            assert gone["error"] == "WeightVersionUnavailable" and "version 2" in gone["message"]
            same = t.load(published[3].locator, expected_digest=published[3].digest)  # own
            assert float(same["b"].double().sum()) == got[3]["sums"]["b"]
            t.done()
    finally:
        reader.close()
    assert not list(tmp_path.iterdir())  # close removed the manifests and the ring


@cuda
def test_a_held_slot_is_not_overwritten_and_the_publisher_names_the_reader(tmp_path) -> None:
    reader = Reader(tmp_path)
    try:
        with open_transport("cuda_ipc", namespace=_ns(), directory=tmp_path, keep_last=1,
                            slots=1, ack_timeout_s=0.5) as t:
            p1 = t.publish(1, _tensors(1))
            first = reader("load", p1.locator, p1.digest)  # and keeps holding it
            with pytest.raises(WeightTransportError,
                               match=rf"weight version 2 .*reader pid {reader.proc.pid} .*"
                                     r"slot 0 .*done\(locator\)"):
                t.publish(2, _tensors(2))
            assert first["sums"]["b"] == pytest.approx(float(_tensors(1)["b"].double().sum()))
            again = reader("load", p1.locator, p1.digest)  # version 1 was released...
            assert again["error"] == "WeightVersionUnavailable"
            p3 = t.publish(3, _tensors(3))  # ...and that load let go of the slot
            assert reader("load", p3.locator, p3.digest)["sums"]["n"] == float(
                _tensors(3)["n"].sum())
    finally:
        reader.close()


@cuda
def test_publishing_cast_to_the_engine_dtype_keeps_the_trainers_digest(tmp_path) -> None:
    reader = Reader(tmp_path)
    try:
        with open_transport("cuda_ipc", namespace=_ns(), directory=tmp_path,
                            dtype="bfloat16") as t:
            sd = _tensors(5)
            p = t.publish(1, sd)
            assert p.digest == weights_digest({k: x.cpu() for k, x in sd.items()})  # fp32's
            got = reader("load", p.locator, p.digest)
            assert got["dtypes"] == {"a": "torch.bfloat16", "b": "torch.bfloat16",
                                     "b2": "torch.bfloat16", "n": "torch.int64"}
            assert got["sums"]["b"] == float(sd["b"].to(torch.bfloat16).double().sum())
            wrong = reader("load", p.locator, "0" * 64)
            assert wrong["error"] == "WeightDigestMismatch"
            # The digest checked off the critical path: the slot stays held until its host copy
            # is done, and a damaged slot fails the check.
            views = t.load(p.locator)
            check = t.verify_later(p.locator, p.digest)
            t.done()
            assert check.result() != p.digest  # the cast slot's own digest, checked
            with pytest.raises(ValueError, match="needs load"):
                t.verify_later(p.locator, p.digest)  # no longer held
            views = t.load(p.locator)
            with pytest.raises(WeightDigestMismatch, match="announced 0000"):
                t.verify_later(p.locator, "0" * 64)  # not the announced version: at once
            views["b"].add_(1.0)  # damage the slot itself
            with pytest.raises(WeightDigestMismatch, match="weight version 1"):
                t.verify_later(p.locator, p.digest).result()
            t.done()
    finally:
        reader.close()
    assert os.listdir(tmp_path) == []
