"""Against a real SGLang server: runs only where sglang and a GPU are present, with
STREAMRL_SGLANG_MODEL naming a small Qwen3-MoE HF checkpoint directory. Skipped everywhere else
(it has never run on this project's machines: SGLang's wheels pin another torch)."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import torch

from streamrl.hooks.generation import GenerationRequest, SamplingParams
from streamrl.models import load_checkpoint
from streamrl.models.checkpoint import to_hf_names
from streamrl.producers.sglang import SGLangConfig, SGLangEngine

MODEL = os.environ.get("STREAMRL_SGLANG_MODEL")
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("sglang") is None or not torch.cuda.is_available() or not MODEL,
    reason="needs sglang, a GPU and STREAMRL_SGLANG_MODEL (a Qwen3-MoE checkpoint)")


@pytest.fixture(scope="module")
def server_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([
        sys.executable, "-m", "sglang.launch_server", "--model-path", str(MODEL), "--port",
        str(port), "--weight-version", "0", "--enable-return-routed-experts",
        "--skip-tokenizer-init", "--mem-fraction-static", "0.5"])
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1)
                break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail("SGLang did not become healthy in 10 minutes")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_generation_routing_and_a_weight_update(server_url: str) -> None:
    engine = SGLangEngine.from_checkpoint(MODEL, SGLangConfig(url=server_url, tensor_device="cuda"))
    requests = [GenerationRequest(request_id=f"r{i}", prompt_tokens=[1 + i, 2, 3, 4],
                                  params=SamplingParams(max_new_tokens=16, seed=i))
                for i in range(4)]
    results = engine.generate(requests)
    mc = engine.model_config
    for r in results:
        assert r.routed_experts is not None
        assert r.routed_experts.shape == (len(r.response_tokens), mc.num_moe_layers,
                                          mc.num_experts_per_tok)
        assert (r.response_versions == 0).all() and (r.logprobs <= 0).all()
    # Our own model routes the same tokens mostly the same way (bf16 kernels differ).
    model = load_checkpoint(MODEL).cuda().to(torch.bfloat16)
    r = results[0]
    tokens = torch.from_numpy(np.concatenate([r.prompt_tokens, r.response_tokens])).cuda()
    with torch.no_grad():
        ours = model(tokens[None].long(), torch.arange(len(tokens)).cuda()[None]).routed_experts
    P = len(r.prompt_tokens)
    mine = np.sort(ours[0, P - 1: -1].cpu().numpy(), -1)
    theirs = np.sort(r.routed_experts.astype(np.int64), -1)
    assert (mine == theirs).all(-1).mean() > 0.8
    engine.load_weights(to_hf_names(model.state_dict(), mc), version=1)
    after = engine.generate([GenerationRequest(request_id="after", prompt_tokens=[5, 6],
                                               params=SamplingParams(max_new_tokens=4))])
    assert (after[0].response_versions == 1).all()
    engine.close()
