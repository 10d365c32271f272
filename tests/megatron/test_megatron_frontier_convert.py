"""HF <-> megatron-core conversion for GLM-4.5 (`glm4_moe`) and DeepSeek-V3 / Kimi K2
(`deepseek_v3`: multi-head latent attention, sigmoid router with correction bias and groups,
shared experts, dense first layers), from checkpoints written by the installed transformers:
exact round trips, the MLA projections megatron splits, megatron's own model accepting the
converted state dict strictly (built on CPU when megatron-core imports), and what megatron
cannot express refused by name."""

from __future__ import annotations

import math
from pathlib import Path

import msgspec
import pytest
import torch
from safetensors.torch import load_file

from streamrl.consumers.trainer.megatron import hf_names, hf_to_megatron, megatron_to_hf
from streamrl.consumers.trainer.megatron.convert import megatron_shapes, megatron_unsupported
from streamrl.consumers.trainer.megatron.model import gpt_model, load_hf
from streamrl.models import ModelConfig
from streamrl.models.checkpoint import to_hf_names

TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=48, moe_intermediate_size=16,
            num_hidden_layers=3, first_k_dense_replace=1, n_routed_experts=8, n_shared_experts=1,
            routed_scaling_factor=2.5, max_position_embeddings=128)
# n_group > topk_group with num_experts_per_tok = 2 * topk_group: groups that matter, as
# DeepSeek-V3 (8 groups, 4 chosen, top 8)
DEEPSEEK = dict(TINY, num_attention_heads=4, num_key_value_heads=4, q_lora_rank=16,
                kv_lora_rank=8, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8,
                num_experts_per_tok=4, n_group=4, topk_group=2)
# GLM-4.5: GQA with q/k/v bias, q/k norm, half the head rotary
GLM = dict(TINY, num_attention_heads=4, num_key_value_heads=2, head_dim=8, attention_bias=True,
           use_qk_norm=True, num_experts_per_tok=2, n_group=1, topk_group=1)


def transformers_classes(model_type: str) -> tuple[type, type]:
    t = pytest.importorskip("transformers")  # a GPU machine may lack it; CI has it
    return {"deepseek_v3": (t.DeepseekV3Config, t.DeepseekV3ForCausalLM),
            "glm4_moe": (t.Glm4MoeConfig, t.Glm4MoeForCausalLM)}[model_type]


def write_checkpoint(tmp_path_factory: pytest.TempPathFactory, model_type: str,
                     std: float = 1.0, **fields: object) -> Path:
    """A random-init checkpoint written by transformers. Every tensor is redrawn (norms around
    1, the router bias too, so it changes choices), so a swapped name shows."""
    config_class, model_class = transformers_classes(model_type)
    torch.manual_seed(0)
    model = model_class(config_class(**fields))
    with torch.no_grad():
        for name, t in model.named_parameters():
            if name.endswith("norm.weight"):
                t.uniform_(0.5, 1.5)
            else:
                t.normal_(0, std)
        for name, t in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                t.normal_(0, 0.3)
    path = tmp_path_factory.mktemp(model_type)
    model.save_pretrained(path)
    return path


def read(path: Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    return ModelConfig.from_file(path), load_file(path / "model.safetensors")


def checkpoint(tmp_path_factory: pytest.TempPathFactory, model_type: str,
               **fields: object) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    return read(write_checkpoint(tmp_path_factory, model_type, **fields))


@pytest.fixture(scope="module")
def deepseek(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelConfig, dict]:
    return checkpoint(tmp_path_factory, "deepseek_v3", **DEEPSEEK)


@pytest.fixture(scope="module")
def glm(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelConfig, dict]:
    return checkpoint(tmp_path_factory, "glm4_moe", **GLM)


@pytest.fixture(params=["deepseek_v3", "glm4_moe"])
def family(request: pytest.FixtureRequest) -> tuple[ModelConfig, dict]:
    return request.getfixturevalue("deepseek" if request.param == "deepseek_v3" else "glm")


def test_round_trip_is_exact_both_ways(family: tuple[ModelConfig, dict]) -> None:
    config, hf = family
    assert megatron_unsupported(config) is None
    assert sorted(hf) == sorted(hf_names(config))  # the checkpoint's own names, all of them
    mg = hf_to_megatron(hf, config)
    assert {n: tuple(t.shape) for n, t in mg.items()} == megatron_shapes(config)
    back = megatron_to_hf(mg, config)
    assert sorted(back) == sorted(hf)
    for name, t in hf.items():
        assert torch.equal(back[name], t), name
    again = hf_to_megatron(back, config)
    assert all(torch.equal(again[n], mg[n]) for n in mg)
    # the dense first layer keeps a dense MLP; MoE layers get the router bias and an
    # ungated shared expert
    assert "decoder.layers.0.mlp.linear_fc1.weight" in mg
    assert torch.equal(mg["decoder.layers.2.mlp.router.expert_bias"],
                       hf["model.layers.2.mlp.gate.e_score_correction_bias"])
    assert not any(n.endswith("shared_experts.gate_weight") for n in mg)


def test_mla_projections_split_the_way_megatron_splits_them(deepseek) -> None:
    """Run megatron MLA's projection arithmetic (split q into nope/rope per head, the kv down
    projection into latent/rope, kv up into nope/v per head) on the converted weights: each
    piece equals what transformers' DeepseekV3Attention computes from the HF weights."""
    config, hf = deepseek
    mg = hf_to_megatron(hf, config)
    N, nope, rope, v = (config.num_attention_heads, config.qk_nope_head_dim,
                        config.qk_rope_head_dim, config.v_head_dim)
    x = torch.randn(5, config.hidden_size)
    a, p = "decoder.layers.1.self_attention.", "model.layers.1.self_attn."
    q_mg = (x @ mg[a + "linear_q_down_proj.weight"].T) @ mg[a + "linear_q_up_proj.weight"].T
    q_no_pe, q_pe = q_mg.view(5, N, nope + rope).split([nope, rope], dim=-1)
    q_hf = ((x @ hf[p + "q_a_proj.weight"].T) @ hf[p + "q_b_proj.weight"].T).view(5, N, -1)
    torch.testing.assert_close(q_no_pe, q_hf[..., :nope])
    torch.testing.assert_close(q_pe, q_hf[..., nope:])
    latent, k_pe = (x @ mg[a + "linear_kv_down_proj.weight"].T).split(
        [config.kv_lora_rank, rope], dim=-1)
    kv_hf = x @ hf[p + "kv_a_proj_with_mqa.weight"].T
    torch.testing.assert_close(k_pe, kv_hf[:, config.kv_lora_rank:])
    k_no_pe, value = (latent @ mg[a + "linear_kv_up_proj.weight"].T).view(5, N, -1).split(
        [nope, v], dim=-1)
    up_hf = (kv_hf[:, :config.kv_lora_rank] @ hf[p + "kv_b_proj.weight"].T).view(5, N, -1)
    torch.testing.assert_close(k_no_pe, up_hf[..., :nope])
    torch.testing.assert_close(value, up_hf[..., nope:])


def test_mla_without_q_lora_rank_maps_the_plain_q_proj(tmp_path_factory) -> None:
    config, hf = checkpoint(tmp_path_factory, "deepseek_v3", **{**DEEPSEEK, "q_lora_rank": None})
    mg = hf_to_megatron(hf, config)
    assert torch.equal(mg["decoder.layers.0.self_attention.linear_q_proj.weight"],
                       hf["model.layers.0.self_attn.q_proj.weight"])
    assert not any("q_down_proj" in n or "q_layernorm" in n for n in mg)
    back = megatron_to_hf(mg, config)
    assert all(torch.equal(back[n], t) for n, t in hf.items())
    # megatron-core 0.19's MLA would put a norm before linear_q_proj: the model is refused
    assert "without `q_lora_rank`" in (megatron_unsupported(config) or "")


@pytest.fixture
def megatron_on_cpu(monkeypatch: pytest.MonkeyPatch):
    """megatron-core's one-rank parallel state over gloo, parameters made on the CPU.
    megatron puts a few buffers (the routers' expert bias, MLA's rotary frequencies) on
    `torch.cuda.current_device()`; here that names the CPU. The model is built, not run."""
    pytest.importorskip("megatron.core")
    from megatron.core import parallel_state

    monkeypatch.setattr(torch.cuda, "current_device", lambda: "cpu")
    fresh = not torch.distributed.is_initialized()
    if fresh:
        torch.distributed.init_process_group("gloo", init_method="tcp://127.0.0.1:29631",
                                             rank=0, world_size=1)
    parallel_state.initialize_model_parallel(1, 1)
    yield
    parallel_state.destroy_model_parallel()
    if fresh:
        torch.distributed.destroy_process_group()


@pytest.mark.usefixtures("megatron_on_cpu")
def test_megatron_model_loads_the_conversion_strictly(family) -> None:
    """megatron's own GPTModel (MLA or GQA, sigmoid-routed MoE layers after the dense one)
    takes the converted tensors with no missing or unexpected key, and gives them back."""
    config, hf = family
    gpt = gpt_model(config, use_cpu_initialization=True)
    state = hf_to_megatron(hf, config)
    extra = {n: t for n, t in gpt.state_dict().items() if n.endswith("_extra_state")}
    result = gpt.load_state_dict(state | extra, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    got = {n: t for n, t in gpt.state_dict().items() if not n.endswith("_extra_state")}
    assert sorted(got) == sorted(state)
    back = megatron_to_hf(got, config)
    assert all(torch.equal(back[n], t) for n, t in hf.items())
    router = gpt.decoder.layers[1].mlp.router
    assert (router.score_function, router.topk) == ("sigmoid", config.num_experts_per_tok)
    assert router.config.moe_router_topk_scaling_factor == config.routed_scaling_factor
    assert router.config.moe_router_num_groups == (4 if config.is_mla else None)


YARN = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 40.0, "beta_fast": 32.0,
        "beta_slow": 1.0, "original_max_position_embeddings": 8, "mscale": 0.8,
        "mscale_all_dim": 1.0}  # unequal mscales: cos/sin and softmax both rescaled


@pytest.mark.parametrize("case", ["deepseek_v3", "deepseek_v3_yarn", "glm4_moe"])
@pytest.mark.usefixtures("megatron_on_cpu")
def test_megatron_forward_matches_transformers_on_cpu(case: str, tmp_path_factory,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """megatron's GPTModel with the converted weights computes transformers' logits (fp32):
    MLA with YaRN past its original context, group-limited sigmoid routing with a bias that
    changes choices, shared experts, GLM's partial rotary, q/k norm and q/k/v bias; and with
    a forced routing replayed, the torch backend's logits and gradients (routers included)
    under the same routing. On CPU
    megatron needs two things CUDA gives it: the causal mask (passed explicitly) and the
    dropout RNG tracker (dropout is 0; a tracker that forks nothing)."""
    import contextlib

    from megatron.core.transformer import dot_product_attention

    class NoRNG:
        def fork(self, *_: object) -> contextlib.AbstractContextManager:
            return contextlib.nullcontext()

    monkeypatch.setattr(dot_product_attention.tensor_parallel, "get_cuda_rng_tracker", NoRNG)
    model_type = case.removesuffix("_yarn")
    fields = {"deepseek_v3": DEEPSEEK, "glm4_moe": GLM}[model_type]
    if case.endswith("_yarn"):
        fields = dict(fields, rope_parameters=YARN)
    path = write_checkpoint(tmp_path_factory, model_type, std=0.3, **fields)
    config, hf = read(path)
    reference = transformers_classes(model_type)[1].from_pretrained(path).eval()
    gpt = gpt_model(config, use_cpu_initialization=True)
    load_hf(gpt, hf, config)
    gpt.eval()
    S = 24  # past YaRN's original context of 8
    tokens = torch.randint(0, config.vocab_size, (2, S), generator=torch.Generator().manual_seed(1))
    mask = torch.triu(torch.ones(S, S, dtype=torch.bool), 1)[None, None]
    with torch.no_grad():
        want = reference(tokens).logits
        got = gpt(tokens, torch.arange(S).expand(2, S), mask)
    assert want.abs().max() > 1  # weights large enough that a wrong scale would show
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)

    # routing replay through megatron's RouterReplay: experts that are NOT the router's choice
    # (random distinct ids), forced on both sides, give the torch backend's logits
    from streamrl.consumers.trainer.megatron.replay import replaying
    from streamrl.models import load_checkpoint

    L, E, k = config.num_moe_layers, config.num_experts, config.num_experts_per_tok
    forced = torch.rand(2, S, L, E, generator=torch.Generator().manual_seed(2)).argsort(-1)
    forced = forced[..., :k].int()
    positions = torch.arange(S).expand(2, S)
    ours = load_checkpoint(path).eval()
    free = want
    want = ours(tokens, positions, forced_routing=forced).logits
    assert (want - free).abs().max() > 0.1  # the forced experts change the logits
    with replaying(gpt, lambda: gpt(tokens, positions, mask), forced,
                   torch.ones(2, S, dtype=torch.bool)):
        got = gpt(tokens, positions, mask)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)

    # and every gradient under replay, the routers' included, is the torch backend's
    probe = torch.randn(want.shape, generator=torch.Generator().manual_seed(4))
    (want * probe).sum().backward()
    (got * probe).sum().backward()
    grads = to_hf_names({n: p.grad for n, p in ours.named_parameters() if p.grad is not None},
                        config)
    expected = hf_to_megatron({**hf, **grads}, config)  # the router bias has no gradient
    for name, p in gpt.named_parameters():  # fp32 sums in another order: 1e-5 of the largest
        assert (p.grad - expected[name]).abs().max() <= 1e-5 * expected[name].abs().max(), name
    assert expected["decoder.layers.1.mlp.router.weight"].abs().max() > 1e-3


def _with(config: ModelConfig, **fields: object) -> ModelConfig:
    return msgspec.convert({**msgspec.structs.asdict(config), **fields}, ModelConfig)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        (dict(norm_topk_prob=False), "norm_topk_prob = false"),
        (dict(num_experts_per_tok=2, n_group=4, topk_group=2), "/ topk_group = 2 / 2 != 2"),
        (dict(rope_interleave=False), "rope_interleave = false"),
        (dict(rope_scaling={"rope_type": "yarn", "factor": 40.0, "truncate": False,
                            "original_max_position_embeddings": 32}), "truncate = false"),
        (dict(rope_scaling={"rope_type": "yarn", "factor": 40.0, "attention_factor": 1.2,
                            "original_max_position_embeddings": 32}), "attention_factor"),
        (dict(rope_scaling={"rope_type": "yarn", "factor": 40.0, "mscale_all_dim": 1.0,
                            "original_max_position_embeddings": 32}), "but no `mscale`"),
        (dict(attention_bias=True), "attention_bias"),
    ],
)
def test_what_megatron_cannot_express_is_named(deepseek, fields: dict, reason: str) -> None:
    config = _with(deepseek[0], **fields)
    assert reason in (megatron_unsupported(config) or ""), megatron_unsupported(config)
    with pytest.raises(ValueError, match="cannot express"):
        gpt_model(config)  # refused before megatron-core is imported


def test_yarn_as_deepseek_v3_and_kimi_k2_use_it_is_expressible(deepseek, glm) -> None:
    config = deepseek[0]
    for mscale in (1.0, None):  # DeepSeek-V3 sets both mscales; without them m(factor)
        yarn = {"rope_type": "yarn", "factor": 40.0, "original_max_position_embeddings": 32,
                "beta_fast": 32.0, "beta_slow": 1.0, "mscale": mscale, "mscale_all_dim": mscale}
        assert megatron_unsupported(_with(config, rope_scaling=yarn)) is None
    glm_yarn = _with(glm[0], rope_scaling=yarn)
    assert "YaRN rope scaling outside MLA" in (megatron_unsupported(glm_yarn) or "")


FRONTIER = Path(__file__).parents[2] / "recipes" / "frontier"


@pytest.mark.parametrize(("name", "billions"), [("deepseek_v3", 671.0), ("kimi_k2", 1026.4),
                                                ("glm45_air", 106.9)])
def test_the_frontier_models_are_expressible(name: str, billions: float) -> None:
    """The full models' own config.json (DeepSeek-V3's group-limited routing and YaRN, Kimi K2's
    YaRN, GLM-4.5-Air's partial rotary) pass every check, and megatron's layout holds exactly
    the parameters `streamrl plan` counts (DeepSeek-V3's published 671B; the multi-token
    prediction layers aside, as transformers leaves them)."""
    import json

    from streamrl.plan.params import count_params
    from streamrl.plan.shape import read_shape

    path = FRONTIER / name / "config.json"
    config = ModelConfig.from_file(path)
    assert megatron_unsupported(config) is None
    total = sum(math.prod(shape) for shape in megatron_shapes(config).values())
    assert total == count_params(read_shape(json.loads(path.read_text()))).total
    assert round(total / 1e9, 1) == billions
