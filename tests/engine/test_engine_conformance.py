"""The `Engine` protocol's contract (streamrl/hooks/engine.py), written once and run against every
backend: the embedded `TorchEngine` on tiny dense and MoE checkpoints, the `SGLangEngine`
adapter against `FakeSGLang` (tests/sglang/fake_server.py), a local stand-in for the SGLang
server that the unit test of our adapter needs (it is not SGLang), and the `VLLMEngine` adapter
against a real vLLM CPU server (`vllm_backend`; tests/vllm/test_conformance.py runs these tests
with it, late in the suite, so CI's background build of the vLLM venv is done by then). Each
test states something the producer relies on. A new backend gets a `Backend` here and must pass
all of them."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from torch import Tensor

from streamrl.hooks.engine import Engine
from streamrl.hooks.generation import (
    GenerationRequest,
    GenerationResult,
    SamplingParams,
    seed_from_request_id,
)
from streamrl.models import ModelConfig
from streamrl.models.checkpoint import read_safetensors
from streamrl.producers.rollout import EngineClient
from streamrl.producers.sglang import SGLangConfig, SGLangEngine
from streamrl.producers.vllm import VLLMConfig, VLLMEngine
from tests.engine.engine_util import engine as torch_engine
from tests.engine.engine_util import prompt
from tests.sglang.fake_server import FakeSGLang
from tests.vllm.real import RealVLLM, wait_running

LONG = 40  # tokens: a request that is still running after a few steps (the fake holds it)
DEADLINE_S = 30.0


class Backend:
    """One engine under test, plus what the suite cannot ask through the protocol."""

    def __init__(self, engine: Engine, model: ModelConfig, next_weights: dict[str, Tensor],
                 server: FakeSGLang | None = None, real: RealVLLM | None = None) -> None:
        self.engine, self.model, self.next_weights, self.server, self.real = (
            engine, model, next_weights, server, real)

    def wait_running(self, request_id: str) -> None:
        """Until the request has started (the embedded engine: one step prefills it; SGLang: the
        server has it; vLLM: its scheduler runs it), so an abort meets a running request rather than
        racing its submission."""
        if self.real is not None:
            wait_running(self.real.server.url, DEADLINE_S)
            return
        if self.server is None:
            assert self.engine.step() == []
            return
        deadline = time.monotonic() + DEADLINE_S
        while not any(path == "/generate" and body.get("rid") == request_id
                      for path, body in list(self.server.calls)):
            assert time.monotonic() < deadline, f"{request_id} never reached the server"
            time.sleep(0.005)


def vllm_backend(real: RealVLLM) -> Iterator[Backend]:
    """The vLLM adapter on the shared real server, serving its checkpoint as version 0."""
    engine = VLLMEngine.from_checkpoint(real.checkpoint, VLLMConfig(
        url=real.server.url, poll_s=0.01, max_seq_len=real.max_model_len))
    b = Backend(engine, engine.model_config, read_safetensors(real.next_checkpoint), real=real)
    yield b
    b.engine.close()


@pytest.fixture(params=[("torch", "dense"), ("torch", "moe"), ("sglang", "dense"),
                        ("sglang", "moe")], ids="-".join)
def backend(request) -> Iterator[Backend]:
    kind, model = request.param
    path: Path = request.getfixturevalue(model).path
    next_weights = read_safetensors(request.getfixturevalue(f"{model}_next").path)  # HF names
    config = ModelConfig.from_file(path)
    if kind == "torch":
        b = Backend(torch_engine(path), config, next_weights)
        yield b
        b.engine.close()
        return
    with FakeSGLang(vocab=config.vocab_size, num_hidden_layers=config.num_hidden_layers,
                    moe_layers=config.moe_layers, top_k=config.num_experts_per_tok,
                    num_experts=config.num_experts, hold_over=LONG - 1) as server:
        engine = SGLangEngine.from_checkpoint(path, SGLangConfig(url=server.url, poll_s=0.01))
        b = Backend(engine, config, next_weights, server)
        yield b
        b.engine.close()


def req(name: str, length: int = 6, **params) -> GenerationRequest:
    return GenerationRequest(request_id=name, prompt_tokens=prompt(length, sum(map(ord, name))),
                             params=SamplingParams(**{"max_new_tokens": 8, **params}))


def run_to_end(engine: Engine) -> list[GenerationResult]:
    results: list[GenerationResult] = []
    deadline = time.monotonic() + DEADLINE_S
    while engine.has_unfinished():
        assert time.monotonic() < deadline, "requests never finished"
        results += engine.step()
    return results


def assert_well_formed(result: GenerationResult, request: GenerationRequest,
                       model: ModelConfig) -> None:
    """One logprob, version and (MoE) routing row per response token, as the schema records."""
    n = len(result.response_tokens)
    assert result.request_id == request.request_id
    assert result.prompt_tokens.tolist() == list(request.prompt_tokens)
    assert result.response_tokens.dtype == np.int32 and n <= request.params.max_new_tokens
    assert result.logprobs.dtype == np.float32 and result.logprobs.shape == (n,)
    assert np.isfinite(result.logprobs).all() and (result.logprobs <= 0).all()
    assert result.response_versions.dtype == np.uint32 and result.response_versions.shape == (n,)
    if model.is_moe:
        assert result.routed_experts is not None
        assert result.routed_experts.shape == (n, model.num_moe_layers, model.num_experts_per_tok)
        assert result.routed_experts.dtype == np.uint8
        assert n == 0 or int(result.routed_experts.max()) < model.num_experts
    else:
        assert result.routed_experts is None
    t = result.timing
    assert t.queued_at <= t.started_at <= t.first_token_at <= t.finished_at


def test_it_is_an_engine_with_its_version_and_routing_metadata(backend: Backend) -> None:
    engine = backend.engine
    assert isinstance(engine, Engine)
    assert engine.version == 0 and not engine.has_unfinished()
    assert engine.num_experts == (backend.model.num_experts if backend.model.is_moe else None)


def test_every_request_finishes_once_with_its_tokens_and_logprobs(backend: Backend) -> None:
    engine = backend.engine
    requests = [req("a", max_new_tokens=1), req("b", length=3, max_new_tokens=5),
                req("c", length=9, max_new_tokens=8, seed=1234)]
    for r in requests:
        engine.add_request(r)
    assert engine.has_unfinished()
    results = {}
    for result in run_to_end(engine):
        assert result.request_id not in results, "returned twice"
        results[result.request_id] = result
    assert sorted(results) == ["a", "b", "c"] and not engine.has_unfinished()
    for r in requests:
        res = results[r.request_id]
        assert_well_formed(res, r, backend.model)
        assert res.finish_reason == "length"
        assert len(res.response_tokens) == r.params.max_new_tokens
        assert res.response_versions.tolist() == [0] * r.params.max_new_tokens
        assert res.seed == (r.params.seed if r.params.seed is not None
                            else seed_from_request_id(r.request_id))
    assert engine.step() == []  # nothing is returned twice


def test_a_stop_token_ends_the_request_and_stays_in_the_response(backend: Backend) -> None:
    engine = backend.engine
    engine.add_request(req("free", temperature=0.0, max_new_tokens=8))
    [free] = run_to_end(engine)
    stop = int(free.response_tokens[2])
    first = free.response_tokens.tolist().index(stop)
    stopped_req = GenerationRequest(request_id="stopped", prompt_tokens=req("free").prompt_tokens,
                                    params=SamplingParams(temperature=0.0, max_new_tokens=8,
                                                          stop_token_ids=(stop,)))
    engine.add_request(stopped_req)
    [stopped] = run_to_end(engine)
    assert_well_formed(stopped, stopped_req, backend.model)
    assert stopped.finish_reason == "stop"
    assert stopped.response_tokens.tolist() == free.response_tokens[:first + 1].tolist()


def test_abort_returns_the_request_once_with_finish_reason_abort(backend: Backend) -> None:
    engine = backend.engine
    long = req("long", max_new_tokens=LONG)
    engine.add_request(long)
    backend.wait_running("long")
    assert engine.abort("long")
    [aborted] = run_to_end(engine)
    assert aborted.finish_reason == "abort"
    assert_well_formed(aborted, long, backend.model)
    assert len(aborted.response_tokens) < LONG
    assert not engine.abort("long"), "already returned"
    assert not engine.abort("never-added")
    assert engine.step() == []


def test_weights_loaded_between_steps_change_the_version(backend: Backend) -> None:
    engine = backend.engine
    running = req("running", max_new_tokens=12)
    engine.add_request(running)
    done = engine.step()  # the embedded engine: one token in; a server may have finished it
    engine.load_weights(backend.next_weights, version=1)
    assert engine.version == 1
    engine.add_request(after := req("after", max_new_tokens=4))
    results = {r.request_id: r for r in done + run_to_end(engine)}
    assert sorted(results) == ["after", "running"]
    # in flight across the load: it continues, each token stamped 0 or 1, never going back
    versions = results["running"].response_versions
    assert set(versions.tolist()) <= {0, 1} and (np.diff(versions.astype(np.int64)) >= 0).all()
    assert_well_formed(results["after"], after, backend.model)
    assert results["after"].response_versions.tolist() == [1] * 4
    with pytest.raises(ValueError, match="not newer"):
        engine.load_weights(backend.next_weights, version=1)
    assert engine.version == 1


def test_bad_requests_are_refused_and_the_engine_keeps_serving(backend: Backend) -> None:
    engine = backend.engine
    engine.add_request(req("a"))
    with pytest.raises(ValueError, match="already in the engine"):
        engine.add_request(req("a"))
    with pytest.raises(ValueError, match="non-empty"):
        engine.add_request(GenerationRequest(request_id="empty", prompt_tokens=[]))
    with pytest.raises(ValueError, match="vocabulary"):
        engine.add_request(GenerationRequest(request_id="big",
                                             prompt_tokens=[backend.model.vocab_size]))
    assert [r.request_id for r in run_to_end(engine)] == ["a"]


def test_close_drops_unfinished_requests_and_is_idempotent(backend: Backend) -> None:
    engine = backend.engine
    engine.add_request(req("long", max_new_tokens=LONG))
    backend.wait_running("long")
    engine.close()
    engine.close()
    assert not engine.has_unfinished()
    with pytest.raises(RuntimeError, match="closed"):
        engine.add_request(req("late"))


def test_the_producers_client_drives_it(backend: Backend) -> None:
    """`EngineClient` as the worker uses it: generations awaited at once, `step()` on a worker
    thread while the event loop queues more requests."""
    async def run() -> list[GenerationResult]:
        client = EngineClient(backend.engine)
        params = SamplingParams(max_new_tokens=3)
        tasks = [asyncio.create_task(client.generate(np.asarray(prompt(4, i), np.int32), params))
                 for i in range(6)]
        await asyncio.sleep(0)  # the rollout tasks queue their requests
        while client.has_work() or not all(t.done() for t in tasks):
            await client.step()
        return await asyncio.gather(*tasks)

    results = asyncio.run(run())
    assert [len(r.response_tokens) for r in results] == [3] * 6
    assert len({r.request_id for r in results}) == 6


def test_the_protocol_lives_in_the_library_layer() -> None:
    """streamrl/hooks/ never imports upward: loading the protocol loads no producer or consumer
    module (a fresh interpreter, so other tests' imports do not hide one)."""
    code = ("import sys, streamrl.hooks.engine, streamrl.hooks.generation; "
            "print([m for m in sys.modules if m.startswith(('streamrl.producers', "
            "'streamrl.consumers'))])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parents[2])
    assert out.stdout.strip() == "[]"
