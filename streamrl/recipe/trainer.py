"""The trainer's config sections: `ComputeConfig` (device, precision), `AlgorithmConfig` (the
advantage and loss by name or import path, with `LossConfig`, `OverlongConfig`, `KLConfig`
and `BatchConfig`). They are part of the recipe (`RunConfig.trainer`), so they live in the library
layer; the trainer reads them and `streamrl.recipe.hooks` resolves the names and import paths,
once per process. The built-in algorithms and their papers: docs/algorithms.md.
"""

from __future__ import annotations

import difflib
import importlib.util
from typing import Literal

import msgspec
import torch

from streamrl.models.lora import LoraSpec
from streamrl.models.quant import Int4Spec

_ADVANTAGES = "streamrl.consumers.trainer.advantages"
_LOSSES = "streamrl.consumers.trainer.losses"
_CORRECTIONS = "streamrl.consumers.trainer.correction"

ADVANTAGES: dict[str, str] = {
    "grpo": f"{_ADVANTAGES}:grpo",
    "dr_grpo": f"{_ADVANTAGES}:dr_grpo",
    "reinforce_baseline": f"{_ADVANTAGES}:reinforce_baseline",
    "rloo": f"{_ADVANTAGES}:rloo",
    "reinforce_pp": f"{_ADVANTAGES}:reinforce_pp",
    "reinforce_pp_baseline": f"{_ADVANTAGES}:reinforce_pp_baseline",
    "process": f"{_ADVANTAGES}:process",
}
"""`[trainer.algorithm] advantage` short names -> import paths (advantages.py)."""

LOSSES: dict[str, str] = {
    "ppo_tis": f"{_LOSSES}:ppo_tis",
    "decoupled_ppo": f"{_LOSSES}:decoupled_ppo",
    "gspo": f"{_LOSSES}:gspo",
    "gspo_token": f"{_LOSSES}:gspo_token",
    "cispo": f"{_LOSSES}:cispo",
}
"""`[trainer.algorithm] loss` short names -> import paths (losses.py)."""

CORRECTIONS: dict[str, str] = {
    "tis": f"{_CORRECTIONS}:tis",
    "mis_token": f"{_CORRECTIONS}:mis_token",
    "mis_sequence": f"{_CORRECTIONS}:mis_sequence",
    "mis_geometric": f"{_CORRECTIONS}:mis_geometric",
    "icepop": f"{_CORRECTIONS}:icepop",
}
"""`[trainer.algorithm] correction` short names -> import paths (correction.py)."""

DEFAULT_ADVANTAGE = ADVANTAGES["grpo"]
DEFAULT_LOSS = LOSSES["decoupled_ppo"]


def hook_path(name_or_path: str, table: dict[str, str], *, what: str) -> str:
    """The import path a recipe's `name_or_path` stands for: a key of `table`, or an import path
    ("module:attribute") as it is. An unknown name raises ValueError with the known names; a
    dotted string is taken for a (mistyped) path and left for `resolve` to explain."""
    if ":" in name_or_path or "." in name_or_path:
        return name_or_path
    if name_or_path in table:
        return table[name_or_path]
    close = difflib.get_close_matches(name_or_path, table, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ValueError(f"{what} {name_or_path!r} is neither a known name nor an import path "
                     f"('package.module:attribute'); {hint}known: {', '.join(sorted(table))}")


class ComputeConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    device: str = "cpu"
    """Torch device of the learner ("cpu", "cuda", "cuda:1"). With FSDP it is each rank's own."""
    precision: Literal["fp32", "bf16", "fp8"] = "fp32"
    """"bf16": bf16 compute with fp32 master weights and optimizer state (CUDA only). "fp8":
    the same, with the decoder's linear projections as torchao float8 training linears
    (rowwise-scaled FP8 GEMMs forward and backward; weights, optimizer state, checkpoints and
    digests unchanged); CUDA, the torch backend and torchao (docs/low-precision.md)."""
    activation_checkpointing: bool | Literal["auto"] = "auto"
    """Recompute each decoder layer in backward instead of keeping its activations (each
    layer's input stays; about one more forward of compute for a fraction of the activation
    memory; gradients are unchanged, bit for bit on CPU). "auto": on for a forward whose
    longest row exceeds `checkpoint_above_tokens`, off below; true / false: always / never."""
    checkpoint_above_tokens: int = 4096
    """The row length (tokens, padding included) above which `activation_checkpointing =
    "auto"` checkpoints. Below it activations are small next to weights and optimizer state,
    and the recompute would cost time for nothing."""
    compile: bool = False
    """torch.compile each decoder layer and the vocabulary-sized logprob kernels (CUDA)."""
    compile_mode: str | None = None
    """torch.compile mode: None (default), "max-autotune-no-cudagraphs" (autotunes the
    generated kernels and matmul choices; compiles for minutes), "reduce-overhead"."""
    compile_scope: Literal["layer", "model"] = "layer"
    """"layer": compile each decoder layer (one small graph, reused 28 times); "model": the
    whole decoder stack as one graph (fuses across layer boundaries; longer compile)."""
    compile_dynamic: bool | None = None
    """torch.compile's `dynamic`: None lets it mark dims dynamic after a shape change (the
    proximal forward and the minibatches differ in rows); False compiles one static graph per
    shape."""
    micro_batch_rows: int | None = None
    """Split each minibatch into micro-batches of at most this many rows and accumulate their
    gradients before the one optimizer step: more tokens per optimizer step at the activation
    memory of a micro-batch. Exact for aggregation = "token_mean" (each micro-batch's loss is
    scaled by its share of the minibatch's trained tokens); other aggregations are refused."""
    micro_batch_tokens: int | None = None
    """Cut each minibatch into micro-batches by a budget of tokens instead of rows: consecutive
    rows while rows x the longest of them stays within this many tokens (padding included),
    each micro-batch trimmed to its own longest row; a row longer than the budget is a
    micro-batch alone. Long and short rows then cost the same activation memory per micro-batch.
    Exact for aggregation = "token_mean", as micro_batch_rows; other aggregations are refused
    (a micro-batch does not know the minibatch's number of samples). Exclusive with
    micro_batch_rows; with [trainer.algorithm.batch] pack_row_tokens, at least that."""
    attention_backend: Literal["auto", "cudnn"] = "auto"
    """SDPA kernel choice: "auto" is PyTorch's order (flash first on an H100); "cudnn" tries
    cuDNN's fused attention first (Hopper-tuned), then flash, then the rest."""
    logprob_chunk_tokens: int = 4096
    """Tokens per chunk of the LM head + log-softmax on CUDA (at vocab 151936 in bf16, 4096
    tokens are 1.2 GB of logits, the largest transient of a step)."""
    memory_limit: str = "auto"
    """Bytes the learner may use, checked before the first step against the predicted peak of
    the worst step the recipe allows (streamrl/plan/learner.py): "auto" is the GPU's free
    memory on CUDA and no check on CPU; a size ("20GiB", "64GB") checks against it (on CPU
    too); "off" never checks. Over it, the trainer refuses to start, naming the terms."""
    fsdp: bool = False
    """Shard parameters, gradients and optimizer state over the default process group with
    FSDP2 (`fully_shard` per decoder layer, then the root); needs torch.distributed set up."""

    def __post_init__(self) -> None:
        device = torch.device(self.device)
        if device.type == "cpu" and (self.precision != "fp32" or self.compile or self.fsdp):
            raise ValueError(f"precision={self.precision!r}, compile and fsdp need a CUDA "
                             f"device; got device={self.device!r} (set device = \"cuda\")")
        if self.precision == "fp8" and importlib.util.find_spec("torchao") is None:
            raise ValueError("precision = \"fp8\" trains through torchao's float8 linears, "
                             "and torchao is not installed here: pip install torchao (its "
                             "wheel, ~3 MB, installs with --no-deps), or set precision = "
                             "\"bf16\"")
        if self.attention_backend != "auto" and device.type == "cpu":
            raise ValueError(f"attention_backend={self.attention_backend!r} needs a CUDA device")
        if self.micro_batch_rows is not None and self.micro_batch_rows <= 0:
            raise ValueError(f"micro_batch_rows must be positive or None, "
                             f"got {self.micro_batch_rows}")
        if self.micro_batch_tokens is not None and self.micro_batch_tokens <= 0:
            raise ValueError(f"micro_batch_tokens must be positive or None, "
                             f"got {self.micro_batch_tokens}")
        if self.micro_batch_rows is not None and self.micro_batch_tokens is not None:
            raise ValueError("set one of compute.micro_batch_rows and compute.micro_batch_tokens"
                             " (a budget of rows or of tokens per micro-batch), not both")
        if self.checkpoint_above_tokens < 0:
            raise ValueError(f"checkpoint_above_tokens must be >= 0, "
                             f"got {self.checkpoint_above_tokens}")
        if self.memory_limit not in ("auto", "off"):
            self.memory_limit_bytes  # noqa: B018  (raises on a bad size)
        if self.logprob_chunk_tokens <= 0:
            raise ValueError(f"logprob_chunk_tokens must be positive, "
                             f"got {self.logprob_chunk_tokens}")

    def checkpoints_at(self, row_tokens: int) -> bool:
        """Whether a forward over rows of `row_tokens` tokens checkpoints its layers."""
        if self.activation_checkpointing == "auto":
            return row_tokens > self.checkpoint_above_tokens
        return self.activation_checkpointing

    @property
    def memory_limit_bytes(self) -> int | None:
        """`memory_limit` in bytes; None for "auto" and "off"."""
        if self.memory_limit in ("auto", "off"):
            return None
        from streamrl.plan.placement import parse_bytes  # plan imports this module

        try:
            return parse_bytes(self.memory_limit)
        except ValueError as error:
            raise ValueError(f"compute.memory_limit: {error}, or \"auto\" / \"off\"") from None

    @property
    def micro_batched(self) -> bool:
        """Whether minibatches are cut into micro-batches (by rows or by tokens)."""
        return self.micro_batch_rows is not None or self.micro_batch_tokens is not None

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    @property
    def on_gpu(self) -> bool:
        return self.torch_device.type == "cuda"


class LossConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    clip_low: float = 0.2
    """eps_low: the surrogate ratio is clipped below at 1 - clip_low."""
    clip_high: float = 0.2
    """eps_high: clipped above at 1 + clip_high (DAPO's "clip-higher" raises it, e.g. 0.28)."""
    importance_cap: float = 2.0
    """C: token importance weights between the trainer's policy and the sampler are capped here."""
    cap_mode: Literal["truncate", "mask"] = "truncate"
    """Over the cap, "truncate" uses weight C; "mask" drops the token (weight 0)."""
    max_log_ratio: float = 20.0
    """Log-ratios are clamped to +-this before exp (exp(20) ~ 5e8 still fits float32 sums)."""
    aggregation: Literal["token_mean", "seq_mean", "seq_sum_norm"] = "token_mean"
    """How token losses become one number. "token_mean": sum over trained tokens / their count
    (every token weighs the same). "seq_mean": mean over each sample's tokens, then over samples
    (every sample weighs the same). "seq_sum_norm": sum / (num_samples * norm_tokens), a constant
    divisor free of length bias (Dr. GRPO)."""
    norm_tokens: int | None = None
    """The per-sample constant of "seq_sum_norm", e.g. the maximum response length."""
    kl_coef: float = 0.0
    """beta: weight of a KL(pi || ref) term added to every trained token's loss, ref being a
    frozen copy of the run's initial weights that the learner keeps (0 = no reference model)."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    """Per-token estimator of KL(pi || ref) from x = log ref - log pi (Schulman's): "k1" = -x,
    "k2" = x^2 / 2, "k3" = exp(x) - 1 - x (unbiased and never negative; GRPO's choice)."""
    entropy_coef: float = 0.0
    """Weight of an entropy bonus: the loss gains -entropy_coef * H(pi(.|context)) per trained
    token (the full distribution's entropy at the sampler's temperature). CPU path only."""

    def __post_init__(self) -> None:
        if not 0 < self.clip_low < 1:
            raise ValueError(f"clip_low must be in (0, 1), got {self.clip_low}")
        if self.clip_high <= 0:
            raise ValueError(f"clip_high must be positive, got {self.clip_high}")
        if self.importance_cap < 1:
            raise ValueError(f"importance_cap must be >= 1 (1 = never up-weight), "
                             f"got {self.importance_cap}")
        if self.max_log_ratio <= 0:
            raise ValueError(f"max_log_ratio must be positive, got {self.max_log_ratio}")
        if self.kl_coef < 0 or self.entropy_coef < 0:
            raise ValueError(f"kl_coef ({self.kl_coef}) and entropy_coef ({self.entropy_coef}) "
                             "must be >= 0 (0 turns the term off)")
        if self.aggregation == "seq_sum_norm" and (self.norm_tokens or 0) <= 0:
            raise ValueError('aggregation "seq_sum_norm" needs norm_tokens > 0 (set it to the '
                             "maximum response length)")


class CorrectionConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Thresholds of the train/rollout mismatch correction (`[trainer.algorithm] correction`)
    on the ratio prox/mu at the policy's level: per token ("tis", "mis_token", "icepop"), the
    sample's product ("mis_sequence") or its per-token geometric mean ("mis_geometric")."""

    cap: float = 2.0
    """C: the upper threshold. "tis" truncates the weight to C, the "mis_*" policies and
    "icepop" mask (weight 0) above it. For "mis_geometric" use a value close to 1 (e.g. 1.01):
    a geometric mean of token ratios strays far less than one token."""
    floor: float | None = None
    """The lower threshold: ratios below it are masked too. None: 0 (one-sided) for "tis",
    "mis_token" and "mis_sequence"; 1/cap (two-sided, IcePop's band [1/b, b]) for "icepop" and
    "mis_geometric"."""

    def __post_init__(self) -> None:
        if self.cap <= 1:
            raise ValueError(f"correction_config.cap must be > 1, got {self.cap}")
        if self.floor is not None and not 0 <= self.floor < 1:
            raise ValueError(f"correction_config.floor must lie in [0, 1) or be unset, "
                             f"got {self.floor}")

    def floor_or(self, default: float) -> float:
        return default if self.floor is None else self.floor


class BatchConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    pack_row_tokens: int | None = None
    """Pack several samples into rows of at most this many tokens (first fit, input order);
    None puts each sample in its own row. Packed rows restart positions at each sample, which is
    how `CausalLM` keeps packed sequences from attending to each other."""
    pad_token_id: int = 0
    """Token id written at padding and at target positions with nothing to predict."""
    pad_to_multiple_of: int = 1
    """Round the padded length S up to a multiple of this (steadier shapes for compiled kernels)."""

    def __post_init__(self) -> None:
        if self.pack_row_tokens is not None and self.pack_row_tokens <= 0:
            raise ValueError(f"pack_row_tokens must be positive or None, "
                             f"got {self.pack_row_tokens}")
        if self.pad_to_multiple_of <= 0:
            raise ValueError(f"pad_to_multiple_of must be positive, got {self.pad_to_multiple_of}")


class OverlongConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """DAPO's soft overlong punishment, added to each sample's reward in the trainer before the
    advantage (the recorded reward stays the task's verdict). With L_max = rollout.max_new_tokens
    and L_cache = buffer_tokens, a response of |y| tokens gets

        0                                       |y| <= L_max - L_cache
        penalty * (L_max - L_cache - |y|) / L_cache   otherwise (down to -penalty at L_max)
    """

    buffer_tokens: int
    """L_cache: the penalty ramps up over the last this many tokens before max_new_tokens."""
    penalty: float = 1.0
    """The penalty at exactly max_new_tokens (DAPO: 1, the reward scale)."""

    def __post_init__(self) -> None:
        if self.buffer_tokens <= 0 or self.penalty < 0:
            raise ValueError(f"overlong.buffer_tokens ({self.buffer_tokens}) must be positive "
                             f"and overlong.penalty ({self.penalty}) >= 0")


class KLConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Where the KL(pi || ref) of `loss_config.kl_coef` comes from and where it acts."""

    reference: Literal["trainer", "producer"] = "trainer"
    """Who computes log ref: "trainer" (default) loads the initial checkpoint a second time in
    the learner and runs one no-grad forward per version; "producer" makes every producer keep a
    frozen torch copy of the initial weights and record `reference_logprobs` with each sample,
    so the learner holds no second model. "trainer" is the default because it works with every
    engine (an SGLang producer has no torch model to score with), costs no memory on the
    producers (there are many; the learner is one) and uses the learner's own kernels, so KL is
    exactly 0 before the first update and replays bit-exactly. A batch without the column under
    "producer" is refused with the sample it lacks it in."""
    penalty: Literal["loss", "reward"] = "loss"
    """"loss": kl_coef * KL is a term of every trained token's loss (GRPO). "reward": it is a
    per-token reward -kl_coef * KL(log prox, log ref) added before the advantage (PPO-RLHF,
    REINFORCE++): sample-level estimators see the reward minus kl_coef times the sequence's KL
    sum, the "process" estimator each token's penalty; no KL term is added to the loss. Pair
    it with an estimator that does not divide by the group std ("dr_grpo", "rloo",
    "reinforce_pp"): under "grpo" the KL differences alone get unit-size advantages in groups
    whose task rewards are equal (docs/algorithms.md, learning check)."""


class AlgorithmConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    advantage: str = DEFAULT_ADVANTAGE
    """A name in `ADVANTAGES` ("grpo", "dr_grpo", "reinforce_baseline", "rloo",
    "reinforce_pp", "reinforce_pp_baseline", "process") or the import path of an
    `AdvantageFn(AdvantageInput) -> Tensor [B, S]`."""
    loss: str = DEFAULT_LOSS
    """A name in `LOSSES` ("decoupled_ppo", "ppo_tis", "gspo", "gspo_token", "cispo") or the
    import path of a `LossFn(LossInput) -> LossOutput`."""
    loss_config: LossConfig = msgspec.field(default_factory=LossConfig)
    """Knobs every built-in loss reads: clip range, importance cap, aggregation, KL, entropy."""
    correction: str | None = None
    """Train/rollout mismatch correction: a name in `CORRECTIONS` ("tis", "mis_token",
    "mis_sequence", "mis_geometric", "icepop") or the import path of a
    `CorrectionFn(CorrectionInput) -> Correction`. Computed once per step from prox and mu, its
    weight replaces the loss's own capped prox/mu (importance_cap, cap_mode). None: the loss's
    own cap. Every step reports mismatch_abs_logprob and mismatch_kl either way, and with a
    correction mismatch_rejected_fraction (docs/low-precision.md)."""
    correction_config: CorrectionConfig = msgspec.field(default_factory=CorrectionConfig)
    """The correction's thresholds (needs `correction`)."""
    overlong: OverlongConfig | None = None
    """DAPO's overlong reward shaping (None = off)."""
    kl: KLConfig = msgspec.field(default_factory=KLConfig)
    """Where the KL reference is computed and where the KL acts (needs loss_config.kl_coef)."""
    batch: BatchConfig = msgspec.field(default_factory=BatchConfig)
    """Batch assembly: packing and padding."""

    def __post_init__(self) -> None:
        hook_path(self.advantage, ADVANTAGES, what="trainer.algorithm.advantage")
        hook_path(self.loss, LOSSES, what="trainer.algorithm.loss")
        if self.correction is None and self.correction_config != CorrectionConfig():
            raise ValueError("[trainer.algorithm.correction_config] is set but no correction is "
                             f"named: set correction to one of {', '.join(CORRECTIONS)}")
        if self.correction is not None:
            hook_path(self.correction, CORRECTIONS, what="trainer.algorithm.correction")
            loss, default = self.loss_config, LossConfig()
            if (loss.importance_cap, loss.cap_mode) != (default.importance_cap,
                                                         default.cap_mode):
                raise ValueError(
                    f"correction = {self.correction!r} replaces loss_config.importance_cap and "
                    "cap_mode: set the threshold as correction_config.cap (and pick a mask "
                    "with a \"mis_*\" or \"icepop\" correction) instead")
        if self.kl != KLConfig() and self.loss_config.kl_coef <= 0:
            raise ValueError("[trainer.algorithm.kl] is set but loss_config.kl_coef is 0: set "
                             "loss_config.kl_coef > 0 (e.g. 0.01) or remove the kl section")


class LoraConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """`[trainer.lora]`: train a low-rank adapter instead of the full weights (docs/lora.md).
    The base stays frozen (bf16 on CUDA with precision = "bf16"), the optimizer holds state for
    the adapter only, and each weight version is the adapter alone."""

    rank: int = 32
    """r: the adapter's rank (rank 1-32 on all linear layers matches full fine-tuning for RL
    at about 10x the learning rate, per "LoRA Without Regret")."""
    alpha: float = 32.0
    """The low-rank update is scaled by alpha / rank."""
    dropout: float = 0.0
    """Dropout on the adapter's input during training (seeded per version: replay stays exact)."""
    target_modules: str | tuple[str, ...] = "all-linear"
    """"all-linear" (every linear layer of the decoder layers, not the LM head) or module
    names such as ["q_proj", "v_proj"]."""
    seed: int = 0
    """Seeds the adapter's A matrices (B starts at zero, so version 0 is the base model)."""
    init: str | None = None
    """A PEFT adapter directory (adapter_config.json + adapter_model.safetensors) to start
    from instead of a fresh adapter; its rank, alpha and targets must equal the fields above."""

    def __post_init__(self) -> None:
        if self.rank < 1 or self.alpha <= 0 or not 0 <= self.dropout < 1:
            raise ValueError(f"trainer.lora needs rank >= 1, alpha > 0 and 0 <= dropout < 1; "
                             f"got rank={self.rank}, alpha={self.alpha}, dropout={self.dropout}")
        if isinstance(self.target_modules, str) and self.target_modules != "all-linear":
            raise ValueError(f"trainer.lora.target_modules must be \"all-linear\" or a list of "
                             f"module names, got {self.target_modules!r} (write "
                             f"[{self.target_modules!r}] for one module)")

    def spec(self) -> LoraSpec:
        """The adapter this section describes, as the model code takes it."""
        return LoraSpec(rank=self.rank, alpha=self.alpha, dropout=self.dropout,
                        target_modules=self.target_modules, seed=self.seed)


class Int4Config(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """INT4 quantization-aware training: symmetric group-wise int4 fake quantization of the
    targeted weights in the training forward, with a straight-through gradient to the fp32
    master weights; the torch engine serves the same weights as packed int4 (W4A16), so
    rollout and training compute with the very same quantized weights
    (streamrl/models/quant.py, docs/low-precision.md)."""

    group_size: int = 128
    """Weights per fp32 scale along each row's input dim; must divide every targeted in_features."""
    targets: Literal["experts", "linear"] = "experts"
    """"experts": the routed experts of MoE layers; "linear": every linear weight of the decoder
    layers (attention, MLPs, experts), never the router, norms, embeddings or LM head."""
    publish: Literal["full", "int4"] = "full"
    """How each version travels to the engines: "full", the trainer's fp32 weights (the engine
    quantizes them on load); "int4", the targeted weights already packed (`<name>.qweight` +
    `<name>.scales`, 4 bits + an fp32 scale per group; the rest as the trainer's), about 1/8
    of their fp32 bytes. Either way the engine serves the same int4 weights and the announced
    digest is the trainer's own (the payload's is `quantized_digest`)."""

    def __post_init__(self) -> None:
        if self.group_size < 2 or self.group_size % 2:
            raise ValueError(f"trainer.qat.int4.group_size must be an even number >= 2 (two "
                             f"int4 per byte), got {self.group_size}")

    def spec(self) -> Int4Spec:
        return Int4Spec(group_size=self.group_size, targets=self.targets)


class QatConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """`[trainer.qat]`: quantization-aware training formats."""

    int4: Int4Config | None = None
    """`int4 = {group_size = 128, targets = "experts"}`: INT4 QAT (None = off)."""
