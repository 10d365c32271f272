"""`SGLangEngine` over HTTP against `FakeSGLang`, a local test server speaking SGLang's JSON. The
fake is not SGLang (see fake_server.py): these tests check our client, its requests, its
conversions and its weight-update sequence, not SGLang's behaviour."""

from __future__ import annotations

import asyncio
import base64
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from streamrl.hooks.generation import GenerationRequest, SamplingParams
from streamrl.hooks.rollout import RolloutSample
from streamrl.models import ModelConfig
from streamrl.producers.rollout import EngineClient
from streamrl.producers.sglang import SGLangConfig, SGLangEngine, SGLangError
from streamrl.schemas import Sample, decode_trajectories, encode_trajectories, samples_to_batch
from tests.sglang.fake_server import FakeSGLang, expert_at

MOE = ModelConfig(model_type="qwen3_moe", vocab_size=100, hidden_size=16, intermediate_size=32,
                  num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                  num_experts=16, num_experts_per_tok=2, moe_intermediate_size=8,
                  mlp_only_layers=(0,))


def fake() -> FakeSGLang:
    return FakeSGLang(vocab=MOE.vocab_size, num_hidden_layers=MOE.num_hidden_layers,
                      moe_layers=MOE.moe_layers, top_k=MOE.num_experts_per_tok,
                      num_experts=MOE.num_experts)


def engine(server: FakeSGLang, **overrides) -> SGLangEngine:
    return SGLangEngine(MOE, SGLangConfig(url=server.url, poll_s=0.01, **overrides))


def request(rid: str, prompt: list[int], n: int = 5) -> GenerationRequest:
    return GenerationRequest(request_id=rid, prompt_tokens=prompt,
                             params=SamplingParams(max_new_tokens=n, seed=7))


def test_generate_returns_results_in_our_columns() -> None:
    with fake() as server:
        eng = engine(server)
        [res] = eng.generate([request("a", [3, 4, 5], n=6)])
        eng.close()
    assert res.response_tokens.tolist() == [6, 7, 8, 9, 10, 11]
    assert np.allclose(res.logprobs, [-0.1 * (i + 1) for i in range(6)])
    assert res.response_versions.tolist() == [0] * 6 and res.finish_reason == "length"
    assert res.routed_experts is not None and res.routed_experts.shape == (6, 3, 2)
    P = 3
    for i in range(6):
        for j, layer in enumerate(MOE.moe_layers):
            assert res.routed_experts[i, j].tolist() == [
                expert_at(P - 1 + i, layer, s, MOE.num_experts) for s in range(2)]
    body = server.calls[0][1]
    assert body["routed_experts_start_len"] == P - 1 and body["sampling_params"]["sampling_seed"]


def test_the_rollout_client_drives_it_and_samples_reach_the_log_format() -> None:
    """The producers' EngineClient, unchanged, awaits generations the adapter serves; the
    results encode into a valid trajectory record (what a producer publishes)."""
    async def run() -> list:
        with fake() as server:
            client = EngineClient(engine(server))
            tasks = [asyncio.create_task(client.generate(np.array([i + 1, i + 2], np.int32),
                                                         SamplingParams(max_new_tokens=4)))
                     for i in range(5)]
            await asyncio.sleep(0)  # the rollout tasks queue their requests
            while client.has_work():
                await client.step()
            return await asyncio.gather(*tasks)

    results = asyncio.run(run())
    assert [r.response_tokens[0] for r in results] == [3, 4, 5, 6, 7]
    samples = []
    for k, res in enumerate(results):
        rs = RolloutSample.from_generation(res)
        samples.append(Sample(
            run_id="r", sample_id=f"s{k}", group_id="g", prompt_id="p", sample_index=k,
            producer_id="p0", policy_version=0, prompt_tokens=rs.prompt_tokens,
            response_tokens=rs.response_tokens, logprobs=rs.logprobs, loss_mask=rs.loss_mask,
            reward=1.0, finish_reason=rs.finish_reason, seed=rs.seed,
            started_at=rs.started_at, finished_at=rs.finished_at,
            response_versions=rs.response_versions, routed_experts=rs.routed_experts))
    decoded = decode_trajectories(encode_trajectories(samples_to_batch(samples)))
    assert decoded.num_rows == 5
    assert decoded.column("moe_num_layers").to_pylist() == [3] * 5


def test_a_weight_update_is_one_session_stamped_with_our_version() -> None:
    with fake() as server:
        eng = engine(server)
        tensors = {"model.embed_tokens.weight": torch.arange(6.0).reshape(3, 2)}
        eng.load_weights(tensors, version=4)
        [res] = eng.generate([request("switch-1", [1, 2], n=5)])
        eng.close()
    assert server.paths()[:5] == ["/pause_generation", "/begin_weight_update",
                                  "/update_weights_from_tensor", "/end_weight_update",
                                  "/continue_generation"]
    update = server.calls[2][1]
    assert update["weight_version"] == "4" and update["flush_cache"] is True
    [entry] = update["serialized_named_tensors"]
    [(name, tensor)] = pickle.loads(base64.b64decode(entry))
    assert name == "model.embed_tokens.weight" and torch.equal(tensor, tensors[name])
    assert server.calls[0][1] == {"mode": "retract"}
    # the fake switched versions after 2 tokens: SGLang's spans become our per-token versions
    assert eng.version == 4 and res.response_versions.tolist() == [4, 4, 5, 5, 5]


def test_older_servers_skip_the_session_and_in_place_keeps_the_cache() -> None:
    with fake() as server:
        eng = engine(server, weight_update_session=False, pause_mode="in_place", tp_size=2)
        eng.load_weights({"w": torch.ones(2)}, version=1)
        eng.close()
    assert server.paths() == ["/pause_generation", "/update_weights_from_tensor",
                              "/continue_generation"]
    update = server.calls[1][1]
    assert update["flush_cache"] is False and len(update["serialized_named_tensors"]) == 2


def test_a_failed_update_still_continues_generation_and_keeps_the_old_version() -> None:
    with fake() as server:
        eng = engine(server)
        server.fail_next = None
        calls_before = len(server.calls)
        # the fake refuses the push: {"success": false}
        original = server.answer

        def refuse(path, body):
            if path == "/update_weights_from_tensor":
                server.calls.append((path, body))
                return 400, {"success": False, "message": "shape mismatch"}
            return original(path, body)

        server.answer = refuse  # type: ignore[method-assign]
        with pytest.raises(SGLangError, match="shape mismatch") as err:
            eng.load_weights({"w": torch.ones(2)}, version=1)
        eng.close()
    assert not err.value.retriable and eng.version == 0
    assert server.paths()[calls_before:][-2:] == ["/end_weight_update", "/continue_generation"]


def test_http_errors_say_what_and_whether_to_retry() -> None:
    with fake() as server:
        eng = engine(server)
        server.fail_next = (503, "overloaded")
        eng.add_request(request("a", [1]))
        with pytest.raises(SGLangError, match="HTTP 503: overloaded") as err:
            while eng.has_unfinished():
                eng.step()
        eng.close()
    assert err.value.retriable and err.value.path == "/generate"
    down = SGLangEngine(MOE, SGLangConfig(url="http://127.0.0.1:9", timeout_s=2))
    with pytest.raises(SGLangError, match="unreachable") as err:
        down.load_weights({"w": torch.ones(1)}, version=1)
    assert err.value.retriable
    down.close()


def test_bad_config_and_requests_are_refused() -> None:
    with pytest.raises(ValueError, match="http://"):
        SGLangEngine(MOE, SGLangConfig(url="localhost:30000"))
    with pytest.raises(ValueError, match="tp_size"):
        SGLangConfig(url="http://x", tp_size=0)
    with fake() as server:
        eng = engine(server)
        with pytest.raises(ValueError, match="vocabulary"):
            eng.add_request(request("big", [1000]))
        with pytest.raises(ValueError, match="not newer"):
            eng.load_weights({"w": torch.ones(1)}, version=0)
        eng.close()


def test_a_recipe_selects_the_adapter_by_import_path(tmp_path) -> None:
    """`rollout.engine_factory` + `engine_options` in the recipe; bad options name the field."""
    from streamrl.models import save_checkpoint
    from streamrl.models.model import CausalLM
    from streamrl.producers.sglang import engine_from_options
    from streamrl.recipe.config import load_recipe

    recipe = Path("recipes/arithmetic/recipe_moe.toml").read_text().replace(
        "[trainer]", 'engine_factory = "streamrl.producers.sglang:engine_from_options"\n'
        'engine_options = { url = "http://127.0.0.1:30000", pause_mode = "in_place" }\n\n'
        "[trainer]", 1)
    (tmp_path / "r.toml").write_text(recipe)
    config, hooks = load_recipe(tmp_path / "r.toml")
    factory = hooks.engine_factory
    save_checkpoint(CausalLM(MOE), tmp_path / "ckpt")
    eng = factory(tmp_path / "ckpt", dict(config.rollout.engine_options))
    assert isinstance(eng, SGLangEngine) and eng.config.pause_mode == "in_place"
    assert eng.model_config.moe_layers == MOE.moe_layers
    eng.close()
    with pytest.raises(ValueError, match="pause_mode"):
        engine_from_options(tmp_path / "ckpt", {"url": "http://x", "pause_mode": "later"})
