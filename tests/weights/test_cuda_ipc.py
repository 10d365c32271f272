"""The cuda_ipc transport: bad input refused on any machine; on a GPU, a second process loads a
published version from the shared device buffer, digest-checked, tied tensors tied."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch

from streamrl.weights import (
    TransportConfig,
    WeightFormatError,
    WeightVersionUnavailable,
    open_transport,
    weights_digest,
)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
ROOT = Path(__file__).resolve().parents[2]


def _ns() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


def test_cuda_ipc_is_a_configurable_transport(tmp_path: Path) -> None:
    t = TransportConfig(kind="cuda_ipc", namespace=_ns(), directory=str(tmp_path)).open()
    assert t.name == "cuda_ipc"
    t.close()


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


_CHILD = """
import sys, json, torch
from streamrl.weights import open_transport
locator, digest = sys.argv[1], sys.argv[2]
with open_transport("cuda_ipc", directory=sys.argv[3]) as t:
    got = t.load(locator, expected_digest=digest)
    tied = got["b"].data_ptr() == got["b2"].data_ptr()
    print(json.dumps({"sums": {k: float(v.double().sum()) for k, v in got.items()},
                      "cuda": all(v.is_cuda for v in got.values()), "tied": tied}))
"""


@cuda
def test_another_process_loads_the_version_from_the_shared_device_buffer(tmp_path) -> None:
    torch.manual_seed(0)
    b = torch.randn(64, 32, device="cuda")
    tensors = {"a": torch.randn(7, 3, device="cuda", dtype=torch.bfloat16), "b": b, "b2": b,
               "n": torch.arange(5, device="cuda")}
    with open_transport("cuda_ipc", namespace=_ns(), directory=tmp_path, keep_last=1) as t:
        published = t.publish(1, tensors)
        assert published.digest == weights_digest({k: v.cpu() for k, v in tensors.items()})
        b.add_(1.0)  # the trainer moves on: the published snapshot must not change
        out = subprocess.run([sys.executable, "-c", _CHILD, published.locator, published.digest,
                              str(tmp_path)], capture_output=True, text=True, cwd=ROOT,
                             check=True)
        got = json.loads(out.stdout.strip().splitlines()[-1])
        assert got["cuda"] and got["tied"]
        assert got["sums"]["b"] == pytest.approx(float((b - 1.0).double().sum()), rel=1e-6)
        same = t.load(published.locator, expected_digest=published.digest)  # own process
        assert float(same["b"].double().sum()) == got["sums"]["b"]
        del same
        t.publish(2, tensors)  # keep_last=1 releases version 1
        with pytest.raises(WeightVersionUnavailable):
            t.load(published.locator)
