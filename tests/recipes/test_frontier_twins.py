"""The frontier recipes' tiny twins (recipes/frontier/*/tiny.toml, streamrl/plan/twin.py): each
keeps its big sibling's architecture, `streamrl plan` counts its parameters exactly, its MoE
layers run grouped, and it runs end to end on CPU with routing recorded, forced in training
and reproduced bit-exactly by `streamrl replay`.

A twin whose `model_type` streamrl/models does not run yet is skipped, naming the family; once
the family is in `FAMILIES` the same test must pass. The Qwen3-235B-A22B twin is the Qwen3-30B-A3B
twin (the two differ only in sizes): a test says so, and only the latter's run is repeated here.
Kimi K2's twin is the DeepSeek-V3 architecture with one router group: its switches, checkpoint
and plan are tested, and the run is DeepSeek-V3's (MLA, YaRN, grouped routing), which keeps
this file's end-to-end cost to three short runs.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from recipes.frontier import twins
from streamrl import aio
from streamrl.consumers.trainer.batch import build_batch
from streamrl.hooks.run import ModelInitRequest
from streamrl.log import open_log
from streamrl.models import ModelConfig, load_checkpoint, token_logprobs
from streamrl.models.config import FAMILIES
from streamrl.models.moe import Experts
from streamrl.plan import count_params, read_shape
from streamrl.plan.twin import DROPPED, SIZES, twin_config
from streamrl.recipe.context import load_run_context
from streamrl.schemas import Sample, batch_to_samples, decode_trajectories
from streamrl.streams import RunStreams
from tests.helpers import REPO, streamrl_here

pytestmark = pytest.mark.usefixtures("one_thread")

FRONTIER = REPO / "recipes" / "frontier"
NAMES = twins.NAMES
RESIZED = {*SIZES, *DROPPED, "num_hidden_layers", "mlp_only_layers", "vocab_size"}
VERSIONS = 2  # tiny.toml's max_versions


def original(name: str) -> dict:
    return json.loads((FRONTIER / name / "config.json").read_text())


def runnable(name: str) -> dict:
    """The twin's config.json, or a skip naming the family streamrl/models lacks."""
    tiny = twins.twin(name)
    if tiny["model_type"] not in FAMILIES:
        pytest.skip(f"streamrl/models has no {tiny['model_type']!r} family yet "
                    f"(streamrl.models.config.FAMILIES): the {name} twin cannot be built")
    return tiny


@pytest.mark.parametrize("name", NAMES)
def test_a_twin_keeps_every_architectural_switch_at_tiny_sizes(name: str) -> None:
    raw, tiny = original(name), twins.twin(name)
    assert tiny == twins.twin(name)  # deterministic
    # Everything but the sizes is copied: model_type, the router (scoring_func, topk_method,
    # n_group, topk_group, routed_scaling_factor, norm_topk_prob), n_shared_experts, rope theta
    # and yarn scaling, partial rotary, qk norm, biases, tied embeddings, moe_layer_freq, ...
    kept = {k: v for k, v in raw.items() if k not in RESIZED}
    assert {k: tiny[k] for k in kept} == kept
    assert not DROPPED & tiny.keys()
    big, small = read_shape(raw), read_shape(tiny)
    for switch in ("model_type", "attention", "tie_word_embeddings", "qkv_bias", "o_bias",
                   "qk_norm", "mlp_bias", "router_bias", "shared_gate", "num_mtp_layers"):
        assert getattr(small, switch) == getattr(big, switch), switch
    assert bool(small.shared_intermediate_size) == bool(big.shared_intermediate_size)
    assert (small.num_kv_heads == small.num_heads) == (big.num_kv_heads == big.num_heads)
    if big.attention == "gqa":  # a q wider than the hidden size stays wider
        wide = big.num_heads * big.head_dim != big.hidden_size
        assert (small.num_heads * small.head_dim != small.hidden_size) == wide
    else:  # MLA: every rank and head dim kept > 0, and q's low rank set or None as the original
        assert (small.q_lora_rank is None) == (big.q_lora_rank is None)
        assert min(small.kv_lora_rank, small.qk_nope_head_dim, small.qk_rope_head_dim,
                   small.v_head_dim) > 0
    # Layers: at least one dense layer first where the original has them, then two MoE layers.
    first_dense = 0 in big.moe_layers
    assert (0 not in small.moe_layers) == (not first_dense)
    assert len(small.moe_layers) == 2 and small.num_layers <= 4
    # Experts: a small count that the router's groups still divide, top-k reachable within
    # topk_group groups.
    groups, picked = raw.get("n_group") or 1, raw.get("topk_group") or 1
    assert 8 <= small.num_experts <= 16 and small.num_experts % groups == 0
    assert 2 <= small.top_k <= min(big.top_k, picked * small.num_experts // groups)
    assert small.hidden_size == 64 and tiny["vocab_size"] == twins.TOKENIZER.vocab_size
    assert count_params(small).total < 10**6  # a few MB in fp32


def test_a_full_q_projection_stays_full_in_the_twin() -> None:
    raw = original("deepseek_v3") | {"q_lora_rank": None}  # DeepSeek-V2-Lite's way
    assert twin_config(raw, vocab_size=20)["q_lora_rank"] is None
    assert read_shape(twin_config(raw, vocab_size=20)).q_lora_rank is None


def test_a_sparse_layer_pattern_is_kept_until_two_moe_layers() -> None:
    raw = original("qwen3_30b_a3b") | {"decoder_sparse_step": 2, "mlp_only_layers": [0, 47]}
    tiny = twin_config(raw, vocab_size=20)
    assert (tiny["num_hidden_layers"], tiny["mlp_only_layers"]) == (4, [0])
    assert read_shape(tiny).moe_layers == (1, 3)
    with pytest.raises(ValueError, match="too sparse for a tiny twin"):
        twin_config(raw | {"decoder_sparse_step": 9}, vocab_size=20)


def test_the_qwen3_235b_twin_is_the_qwen3_30b_twin(tmp_path: Path) -> None:
    """Qwen3-235B-A22B and Qwen3-30B-A3B differ only in sizes: their twins are one model (the
    same config, the same checkpoint bytes for a seed) under the same recipe, so the 30B twin's
    run below stands for both."""
    assert twins.twin("qwen3_235b_a22b") == twins.twin("qwen3_30b_a3b")

    def settings(name: str) -> str:
        text = (FRONTIER / name / "tiny.toml").read_text()
        body = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
        return body.replace(name, "NAME").replace(name.replace("_", "-"), "NAME")

    assert settings("qwen3_235b_a22b") == settings("qwen3_30b_a3b")
    runnable("qwen3_30b_a3b")
    a = twins.qwen3_235b_a22b(ModelInitRequest(out_dir=tmp_path / "a", seed=5))
    b = twins.qwen3_30b_a3b(ModelInitRequest(out_dir=tmp_path / "b", seed=5))
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()


@pytest.mark.parametrize("name", NAMES)
def test_the_twin_checkpoint_is_small_grouped_and_planned_to_the_parameter(
        name: str, tmp_path: Path) -> None:
    tiny = runnable(name)
    init = getattr(twins, name)
    out = init(ModelInitRequest(out_dir=tmp_path / "twin", seed=0))
    assert out == tmp_path / "twin"
    weights = (out / "model.safetensors").read_bytes()
    assert len(weights) < 4 * 2**20
    again = init(ModelInitRequest(out_dir=tmp_path / "again", seed=0))
    assert (again / "model.safetensors").read_bytes() == weights  # the seed fixes the bytes
    # The checkpoint holds the twin's architecture (its config.json reads back the same).
    assert ModelConfig.from_file(out) == ModelConfig.from_hf_dict(tiny)

    model = load_checkpoint(out)
    experts = [m for m in model.modules() if isinstance(m, Experts)]
    assert len(experts) == len(read_shape(tiny).moe_layers) == 2
    assert {m.impl for m in experts} == {"grouped"}  # the default path, as engine and trainer run
    numel = sum(t.numel() for t in {id(t): t for t in model.state_dict().values()}.values())

    code, stdout, stderr = streamrl_here("plan", str(FRONTIER / name / "tiny.toml"), "--gpus", "2",
                                         "--config-json", str(out / "config.json"))
    assert code == 0, stdout + stderr
    found = re.search(r"parameters, total\W+([\d,]+)", stdout)
    assert found is not None, stdout
    assert int(found.group(1).replace(",", "")) == numel


def _recorded(log_url: str, run_id: str) -> tuple[Path, list[Sample]]:
    """The run's version-0 checkpoint (as RunStarted names it) and every trained-on sample."""
    async def read() -> tuple[Path, list]:
        async with open_log(log_url) as log:
            context = await load_run_context(log, run_id)
            return context.init_checkpoint, await log.read_all(RunStreams(run_id).trajectories)

    initial, records = aio.run(read())
    assert records
    return initial, [s for r in records for s in batch_to_samples(decode_trajectories(r.value))]


@pytest.mark.slow
@pytest.mark.timeout(600)  # measured ~30 s each on 2 cores shared with other jobs
@pytest.mark.parametrize("name", [n for n in NAMES if n not in ("qwen3_235b_a22b", "kimi_k2")])
def test_the_twin_runs_with_routing_replay_and_replays_bit_exactly(
        name: str, tmp_path: Path) -> None:
    shape = read_shape(runnable(name))
    log_url, runs = str(tmp_path / "log"), str(tmp_path / "runs")
    run_id = f"{name.replace('_', '-')}-tiny-{uuid.uuid4().hex[:8]}"
    code, stdout, stderr = streamrl_here("run", str(FRONTIER / name / "tiny.toml"), "--log",
                                         log_url, "--run", run_id, "--runs-dir", runs)
    assert code == 0, stderr[-4000:] + stdout[-2000:]

    # Captured: every response token's top-k set of every MoE layer, with the twin's expert count.
    initial, samples = _recorded(log_url, run_id)
    for s in samples:
        routing = np.asarray(s.routed_experts)
        assert s.moe_num_experts == shape.num_experts
        assert routing.shape == (len(s.response_tokens), len(shape.moe_layers), shape.top_k)
        assert (np.diff(routing, axis=-1) > 0).all() and routing.max() < shape.num_experts

    # Forced: the trainer's batch carries the record at every response position, and the model
    # routes those positions to exactly the recorded experts, giving the engine's logprobs.
    first = [s for s in samples if s.policy_version == 0]
    batch = build_batch(first)
    assert batch.forced_routing is not None and batch.routing_mask is not None
    assert int(batch.routing_mask.sum()) == sum(len(s.response_tokens) for s in first)
    model = load_checkpoint(initial)
    with torch.no_grad():
        out = model(batch.tokens, batch.positions, forced_routing=batch.forced_routing,
                    routing_mask=batch.routing_mask, return_hidden=True)
        logprobs = token_logprobs(out.hidden, model.lm_head.weight, batch.targets)[0]
    mask = batch.routing_mask
    routed = out.routed_experts[mask].sort(dim=-1).values
    assert torch.equal(routed, batch.forced_routing[mask].long().sort(dim=-1).values.to(routed))
    torch.testing.assert_close(logprobs[mask], batch.old_logprobs[mask], atol=1e-4, rtol=0)

    code, stdout, stderr = streamrl_here("replay", run_id, "--log", log_url, "--runs-dir", runs)
    assert code == 0, stdout[-3000:] + stderr[-3000:]
    assert f"reproduced {VERSIONS}/{VERSIONS} versions bit-exactly" in stdout
