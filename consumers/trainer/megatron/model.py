"""megatron-core GPTModel for the same HF config (Qwen3, Qwen3-MoE, Qwen2, Llama 3.x, Mistral,
GLM-4.5, DeepSeek-V3 / Kimi K2; `convert.megatron_unsupported` names what it cannot express),
and a learner that trains it with the same GRPO step as the torch backend.

    pip install 'streamrl[megatron]'   # megatron-core; its forward needs CUDA
    initialize()                        # one-rank process group + megatron's model parallel state
    learner = MegatronLearner(model_config, hf_state_dict, LearnerSetup.of_run(config, hooks))

The model uses the local (pure megatron-core, no Transformer Engine) layer spec with
qk-layernorm where the family has it (Qwen3), the q/k/v bias where it has one (Qwen2,
`add_qkv_bias`), llama3 rope scaling through GPTModel's `rope_scaling`, GQA
(`num_query_groups`), SwiGLU (`gated_linear_unit` + silu), RMSNorm, RoPE at the config's
theta, tied or untied embeddings. Weights move in and out under HF names through
`convert.py`, so versions are published and digested exactly like the torch backend's.
Logprobs take megatron's final hidden states through `output_processor` into the same
`fused_token_logprobs` (no [tokens, vocab] fp32 logits).

Qwen3-MoE: megatron's local MoE layer (TopKRouter + SequentialMLP, allgather dispatcher) on the
config's MoE layers, the dense MLP elsewhere. Qwen3 routes by softmax then top-k, renormalized
when `norm_topk_prob`; megatron's `moe_router_pre_softmax=False` takes the top-k of the logits
and a softmax over those k, which is the same renormalized distribution (softmax is monotone),
and `moe_router_pre_softmax=True` is softmax then top-k without renormalizing. No aux loss, no
z-loss, no jitter, no capacity dropping, unfused router (the fused path bypasses replay):
exactly the torch backend's MoE. GLM-4.5 / DeepSeek-V3: the sigmoid router with its correction
bias, groups, scaling factor and ungated shared experts (`_deepseek_router_fields`); DeepSeek's
MLA through megatron's MLASelfAttention (`_mla_fields`, `_mla_core_attention`). Routing replay
goes through megatron's own RouterReplay (`replay.py`). Checkpoints are HF checkpoints plus
megatron-ordered AdamW state (`save`, `from_checkpoint`). Limits: tensor, pipeline and expert
parallel size 1, unpacked batches (megatron's RoPE counts positions per row).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from streamrl.checkpoints import OPTIMIZER_FILE
from streamrl.consumers.trainer.batch import TrainBatch
from streamrl.consumers.trainer.compute import autocast
from streamrl.consumers.trainer.learner import Learner, LearnerSetup
from streamrl.consumers.trainer.megatron import convert
from streamrl.consumers.trainer.megatron.convert import (
    hf_to_megatron,
    megatron_to_hf,
    megatron_unsupported,
)
from streamrl.consumers.trainer.megatron.replay import replaying
from streamrl.models import CausalLM, ModelConfig, fused_token_logprobs, load_checkpoint
from streamrl.models.checkpoint import from_hf_names, save_checkpoint, to_hf_names
from streamrl.models.rope import Llama3Rope


def require_megatron() -> Any:
    try:
        import megatron.core
    except ImportError as e:
        raise ImportError("the megatron backend needs megatron-core: pip install "
                          "'streamrl[megatron]' (0.19.x on Python 3.12, with CUDA)") from e
    return megatron.core


def initialize(seed: int = 0, port: int = 29518) -> None:
    """A one-rank NCCL process group (unless one exists) and megatron's parallel state at
    tensor/pipeline size 1; idempotent."""
    require_megatron()
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}",
                                             rank=0, world_size=1)
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(1, 1)
    model_parallel_cuda_manual_seed(seed)


def transformer_config(config: ModelConfig, params_dtype: torch.dtype, *,
                       use_cpu_initialization: bool = False) -> Any:
    from megatron.core.transformer.transformer_config import (
        MLATransformerConfig,
        TransformerConfig,
    )

    fields = dict(
        num_layers=config.num_hidden_layers, hidden_size=config.hidden_size,
        num_attention_heads=config.num_attention_heads,
        num_query_groups=config.num_key_value_heads, kv_channels=config.head_dim,
        ffn_hidden_size=config.intermediate_size, normalization="RMSNorm",
        layernorm_epsilon=config.rms_norm_eps, gated_linear_unit=True, activation_func=F.silu,
        add_bias_linear=False, add_qkv_bias=config.qkv_bias, qk_layernorm=config.qk_norm,
        hidden_dropout=0.0,
        attention_dropout=0.0, params_dtype=params_dtype, bf16=params_dtype == torch.bfloat16,
        attention_softmax_in_fp32=True, use_cpu_initialization=use_cpu_initialization,
        **_moe_fields(config))
    if config.is_mla:
        return MLATransformerConfig(**fields | _mla_fields(config))
    return TransformerConfig(**fields)


def _mla_fields(config: ModelConfig) -> dict[str, Any]:
    """MLATransformerConfig fields for DeepSeek-V3's attention. Every head has its own key, so
    the query groups are the heads; `kv_channels` is the value width (the attention output's
    per-head width); `qk_layernorm` builds the q/kv latent norms; rope or yarn as
    `convert.megatron_unsupported` allows (the YaRN mscales mapped so both sides scale cos/sin
    and the softmax alike)."""
    s = config.rope_scaling
    rope: dict[str, Any] = dict(rope_type="rope", mscale=1.0, mscale_all_dim=0.0)
    if s is not None:  # YaRN (megatron_unsupported refuses the rest)
        both = bool(s.mscale and s.mscale_all_dim)
        rope = dict(rope_type="yarn", rotary_scaling_factor=s.factor,
                    original_max_position_embeddings=s.original_max_position_embeddings,
                    beta_fast=s.beta_fast, beta_slow=s.beta_slow,
                    mscale=s.mscale if both else 1.0,
                    mscale_all_dim=s.mscale_all_dim if both else 0.0)
    return dict(
        num_query_groups=config.num_attention_heads, kv_channels=config.v_head_dim,
        qk_layernorm=True, q_lora_rank=config.q_lora_rank, kv_lora_rank=config.kv_lora_rank,
        qk_head_dim=config.qk_nope_head_dim, qk_pos_emb_head_dim=config.qk_rope_head_dim,
        v_head_dim=config.v_head_dim, rotary_base=config.rope_theta, apply_rope_fusion=False,
        **rope)


def _moe_fields(config: ModelConfig) -> dict[str, Any]:
    """TransformerConfig fields that make megatron's MoE layers compute ours (Qwen3-MoE's
    softmax router, or DeepSeek's sigmoid one)."""
    if not config.is_moe:
        return {}
    shared = config.shared_expert_intermediate_size
    fields = dict(
        num_moe_experts=config.num_experts, moe_router_topk=config.num_experts_per_tok,
        moe_ffn_hidden_size=config.moe_intermediate_size,
        moe_layer_freq=[int(i in config.moe_layers) for i in range(config.num_hidden_layers)],
        moe_router_score_function="softmax", moe_router_pre_softmax=not config.norm_topk_prob,
        moe_router_load_balancing_type="none", moe_aux_loss_coeff=0.0, moe_z_loss_coeff=None,
        moe_input_jitter_eps=None, moe_expert_capacity_factor=None, moe_router_fusion=False,
        moe_grouped_gemm=False, moe_permute_fusion=False, moe_token_dispatcher_type="allgather",
        moe_enable_routing_replay=True,
        moe_shared_expert_intermediate_size=shared or None, moe_shared_expert_gate=shared > 0)
    if config.deepseek_moe:
        fields |= _deepseek_router_fields(config)
    return fields


def _deepseek_router_fields(config: ModelConfig) -> dict[str, Any]:
    """DeepSeek/GLM routing: sigmoid scores, the correction bias (a buffer, `expert_bias`)
    added for choosing only, groups where they can matter, the routed scaling factor, an
    ungated shared MLP of n_shared_experts * moe_intermediate_size; logits in fp32 as
    transformers computes them (`_router_class`)."""
    groups = convert.groups_matter(config)
    shared = config.n_shared_experts * config.moe_intermediate_size
    return dict(
        moe_router_score_function="sigmoid", moe_router_pre_softmax=False,
        moe_router_enable_expert_bias=True, moe_router_dtype="fp32",
        moe_router_num_groups=config.n_group if groups else None,
        moe_router_group_topk=config.topk_group if groups else None,
        moe_router_topk_scaling_factor=config.routed_scaling_factor,
        moe_shared_expert_intermediate_size=shared or None, moe_shared_expert_gate=False)


def build_gpt(config: ModelConfig, params_dtype: torch.dtype = torch.float32) -> Any:
    """An (initialized, random) megatron GPTModel for `config` on the current CUDA device:
    local-spec layers, MoE ones where `config.moe_layers` says."""
    return gpt_model(config, params_dtype).cuda()


def gpt_model(config: ModelConfig, params_dtype: torch.dtype = torch.float32, *,
              use_cpu_initialization: bool = False) -> Any:
    """`build_gpt`'s model before it moves to CUDA (with `use_cpu_initialization`, its
    parameters are made on the CPU); refuses what `megatron_unsupported` names before
    importing megatron-core."""
    if (reason := megatron_unsupported(config)) is not None:
        raise ValueError(f"the megatron backend cannot express this {config.model_type} model: "
                         f"{reason}; use [trainer] backend = \"torch\"")
    require_megatron()
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer.moe.router_replay import RouterReplay
    from megatron.core.transformer.torch_norm import WrappedTorchNorm
    from megatron.core.transformer.transformer_block import TransformerBlockSubmodules

    # MLA's q/kv latent norms are its "qk_layernorm"
    qk_norm = config.qk_norm or config.is_mla
    dense = get_gpt_layer_local_spec(qk_layernorm=qk_norm, normalization="RMSNorm",
                                     multi_latent_attention=config.is_mla)
    moe = get_gpt_layer_local_spec(num_experts=config.num_experts or None,
                                   qk_layernorm=qk_norm, normalization="RMSNorm",
                                   moe_grouped_gemm=False, multi_latent_attention=config.is_mla)
    if config.is_moe:
        moe.submodules.mlp.keywords["submodules"].router = _router_class()
    if config.is_mla:
        for layer in (dense, moe):
            layer.submodules.self_attention.submodules.core_attention = _mla_core_attention()
    spec = TransformerBlockSubmodules(
        layer_specs=[moe if i in config.moe_layers else dense
                     for i in range(config.num_hidden_layers)],
        layer_norm=WrappedTorchNorm)  # torch RMSNorm for the final norm too
    llama3 = isinstance(config.rope_scaling, Llama3Rope)
    gpt = GPTModel(
        config=transformer_config(config, params_dtype,
                                  use_cpu_initialization=use_cpu_initialization),
        transformer_layer_spec=spec,
        vocab_size=config.vocab_size, max_sequence_length=config.max_position_embeddings,
        share_embeddings_and_output_weights=config.tie_word_embeddings,
        position_embedding_type="rope", rotary_base=int(config.rope_theta),
        rotary_percent=config.partial_rotary_factor, rope_scaling=llama3,
        rope_scaling_factor=config.rope_scaling.factor if llama3 else 8.0)
    # Each router registers its RouterReplay in a class-level list that would keep every model
    # ever built alive; `replay.py` drives a model's own instances instead.
    RouterReplay.global_router_replay_instances.clear()
    return gpt


_ROUTER: type | None = None


def _router_class() -> type:
    """megatron's TopKRouter with the gate computed by a plain `F.linear`.

    megatron's own gate (`RouterGatingLinearFunction`) expects bf16 parameters (its
    Float16Module) and no autocast: under bf16 autocast over fp32 master weights, as this
    backend trains, its forward returns bf16 logits and its backward then multiplies a bf16
    gradient with the fp32 weight and fails. `F.linear` gives the logits the torch backend's
    `nn.Linear` gate gives (a bf16 matmul under autocast, fp32 without; always fp32 for the
    DeepSeek-style router) and autograd's own backward. Everything after the logits (top-k,
    softmax or sigmoid, replay) is megatron's."""
    global _ROUTER
    if _ROUTER is None:
        from megatron.core.transformer.moe.router import TopKRouter

        class Router(TopKRouter):
            def gating(self, input: Tensor) -> Tensor:
                if self.config.moe_router_dtype != "fp32":
                    return F.linear(input, self.weight, self.bias)
                # DeepSeek/GLM: fp32 logits whatever the autocast, as transformers'
                # router (`F.linear(h.float(), weight.float())`)
                with torch.autocast(input.device.type, enabled=False):
                    return F.linear(input.float(), self.weight.float())

        _ROUTER = Router
    return _ROUTER


_MLA_CORE: type | None = None


def _mla_core_attention() -> type:
    """megatron's local DotProductAttention for MLA's core attention.

    MLASelfAttention builds its core attention with `k_channels` / `v_channels` (the q/k
    head width nope + rope differs from v's), which only Transformer Engine's attention takes
    in megatron-core 0.19. The local one computes the same thing for any q/k and v widths: its
    scores use the query's own width, the given softmax scale (MLA's, yarn mscale included),
    and its output width is `kv_channels` per head, which `_mla_fields` sets to v_head_dim."""
    global _MLA_CORE
    if _MLA_CORE is None:
        from megatron.core.transformer.dot_product_attention import DotProductAttention

        class MLACoreAttention(DotProductAttention):
            def __init__(self, config: Any, *args: Any, k_channels: int | None = None,
                         v_channels: int | None = None, **kwargs: Any) -> None:
                assert v_channels in (None, config.kv_channels), (v_channels, config.kv_channels)
                super().__init__(config, *args, **kwargs)

        _MLA_CORE = MLACoreAttention
    return _MLA_CORE


def state_tensors(model: Any) -> dict[str, Tensor]:
    """The model's tensors that hold HF weights: its parameters and the DeepSeek routers'
    correction bias (a persistent buffer, `mlp.router.expert_bias`)."""
    return dict(model.named_parameters()) | {
        n: b for n, b in model.named_buffers() if n.endswith("router.expert_bias")}


def load_hf(model: Any, hf: Mapping[str, Tensor], config: ModelConfig) -> None:
    """Copy HF-named weights into `model` in place (names and shapes checked first)."""
    state = hf_to_megatron(hf, config)
    params = state_tensors(model)
    if set(params) != set(state):
        raise ValueError(f"GPTModel parameters differ from the conversion: only in the model "
                         f"{sorted(set(params) - set(state))[:5]}, only converted "
                         f"{sorted(set(state) - set(params))[:5]}")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(state[name])


def to_hf(model: Any, config: ModelConfig) -> dict[str, Tensor]:
    return megatron_to_hf({n: p.detach().clone() for n, p in state_tensors(model).items()},
                          config)


def logprobs(model: Any, tokens: Tensor, targets: Tensor, *, temperature: float = 1.0,
             chunk_size: int = 4096, forced_routing: Tensor | None = None,
             routing_mask: Tensor | None = None) -> Tensor:
    """[B, S] log p(target) through megatron's decoder and final norm, then the shared
    chunked LM-head logprobs. With `forced_routing` ([B, S, num_moe_layers, top_k]) the MoE
    layers use those experts where `routing_mask` ([B, S]; everywhere if None) is True and
    their own choice elsewhere, with gate weights from their own router (see `replay.py`)."""
    # tokens, targets: [B, S]
    B, S = tokens.shape
    positions = torch.arange(S, device=tokens.device).expand(B, S)

    def head(*, hidden_states: Tensor, output_layer: Any, output_weight: Tensor | None,
             **_: Any) -> Tensor:
        weight = output_weight if output_weight is not None else output_layer.weight
        hidden = hidden_states.transpose(0, 1)  # megatron is [S, B, H]
        return fused_token_logprobs(hidden, weight, targets, temperature=temperature,
                                    chunk_size=chunk_size)

    if forced_routing is None:
        return model(tokens, positions, None, output_processor=head)
    if routing_mask is None:
        routing_mask = torch.ones(B, S, dtype=torch.bool, device=tokens.device)

    def record() -> None:  # the decoder only: the RECORD pass needs the routers, not the head
        model(tokens, positions, None, output_processor=lambda **_: None)

    with replaying(model, record, forced_routing, routing_mask):
        return model(tokens, positions, None, output_processor=head)


class MegatronLearner(Learner):
    """`Learner` with a megatron GPTModel: the same advantages, loss, optimizer and step; fp32
    master weights with bf16 autocast, as the torch backend on CUDA."""

    def __init__(self, model_config: ModelConfig, hf: Mapping[str, Tensor],
                 setup: LearnerSetup) -> None:
        if not setup.trainer.compute.on_gpu:
            raise ValueError("the megatron backend needs a CUDA device (compute.device)")
        if setup.trainer.algorithm.batch.pack_row_tokens is not None:
            raise ValueError("the megatron backend takes unpacked batches: unset "
                             "trainer.algorithm.batch.pack_row_tokens")
        initialize()
        self.setup, self.trainer, self.model_config = setup, setup.trainer, model_config
        self.compute = setup.trainer.compute
        self.model = build_gpt(model_config)
        load_hf(self.model, hf, model_config)
        self.advantage_fn, self.loss_fn = setup.advantage, setup.loss
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.trainer.lr,
                                           weight_decay=self.trainer.weight_decay, fused=True)

    @classmethod
    def from_checkpoint(cls, path: Path, setup: LearnerSetup) -> MegatronLearner:
        """The learner `save` wrote: HF weights (any HF checkpoint of a family megatron can
        express loads) and, when
        present, the AdamW state."""
        model = load_checkpoint(path)
        learner = cls(model.config, to_hf_names(model.state_dict(), model.config), setup)
        learner.load_optimizer(path)
        return learner

    def _with_setup(self, setup: LearnerSetup) -> MegatronLearner:
        return MegatronLearner(self.model_config, self.hf_state_dict(), setup)

    def hf_state_dict(self) -> dict[str, Tensor]:
        return to_hf(self.model, self.model_config)

    def logprobs(self, batch: TrainBatch) -> Tensor:
        with autocast(self.compute):
            return logprobs(self.model, batch.tokens, batch.targets,
                            temperature=self.setup.temperature,
                            chunk_size=self.compute.logprob_chunk_tokens,
                            forced_routing=batch.forced_routing, routing_mask=batch.routing_mask)

    def save(self, path: Path) -> None:
        """The weights as an HF checkpoint (config.json + safetensors, the torch backend's
        format, so either backend resumes from it) plus the AdamW state (`optimizer.pt`, keyed
        by megatron's parameter order)."""
        path = Path(path)
        with torch.device("meta"):
            model = CausalLM(self.model_config)
        state = from_hf_names(self.hf_state_dict(), self.model_config)
        model.load_state_dict(state, strict=False, assign=True)
        model.tie_weights()
        save_checkpoint(model, path)
        torch.save(self.optimizer.state_dict(), path / OPTIMIZER_FILE)
