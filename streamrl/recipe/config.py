"""`RunConfig`: everything that defines a run, read from a recipe's TOML file and validated at
load, before anything starts. Each component is built from its own section (the engine from
`rollout.engine`, streamrl/recipe/engine.py; the learner from `trainer`, with
streamrl/recipe/trainer.py); cross-field rules are checked here with messages that say how to fix
them. The config is recorded verbatim in `RunStarted`, so a replay rebuilds the same run from the
log alone.

    config, hooks = load_recipe("recipes/arithmetic/recipe.toml")
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import msgspec

from streamrl.data.tokenizer import check_fits
from streamrl.recipe.engine import EngineConfig
from streamrl.recipe.hooks import Hooks, check_prompts, resolve_hooks
from streamrl.recipe.megatron import MegatronConfig
from streamrl.recipe.observability import LoggingSection, MetricsSection
from streamrl.recipe.rewards import RewardSpec
from streamrl.recipe.trainer import AlgorithmConfig, ComputeConfig, LoraConfig, QatConfig
from streamrl.staleness import StalenessConfig
from streamrl.streams import check_run_id


class ConfigError(ValueError):
    """A recipe that cannot run; the message names the file and the field."""


EXIT_REFUSED = 78
"""Exit status of a component that refuses its configuration (sysexits' EX_CONFIG), e.g. a
trainer whose worst step would not fit its device: the same process would refuse again, so a
supervisor ends the run with the message instead of restarting it."""


class Section(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    pass


class RunSection(Section, kw_only=True):
    name: str
    """Run id prefix; each run gets `<name>-<time>` unless `streamrl run --run ID` is given."""
    seed: int = 0
    """Seeds prompts, model init, sampling and training: the same seed replays the same run."""
    max_versions: int = 20
    """The run ends when the trainer has published this many new weight versions."""


class ModelSection(Section, kw_only=True):
    """Where version 0's weights come from: exactly one of `path` and `init`."""

    path: str | None = None
    """An HF checkpoint directory (config.json, *.safetensors, and usually the tokenizer's files
    and generation_config.json): the normal way to start. A relative path is taken from the
    directory `streamrl run` starts in and recorded absolute."""
    init: str | None = None
    """Import path of a `ModelInit(ModelInitRequest) -> Path` writing the initial HF checkpoint
    (e.g. a short SFT warm start made by the recipe itself), cached under the runs directory."""
    moe: bool = False
    """Ask `init` for the mixture-of-experts variant of the recipe's model."""

    def __post_init__(self) -> None:
        if (self.path is None) == (self.init is None):
            raise ValueError("[model] needs exactly one of path (an HF checkpoint directory) "
                             "and init (the import path of a hook that writes one)"
                             + ("; remove one" if self.path is not None else ""))
        if self.moe and self.path is not None:
            raise ValueError("model.moe asks model.init for a MoE variant; with model.path the "
                             "checkpoint's config.json decides: remove model.moe")


DEFAULT_NUM_PROMPTS = 1024  # what a `data.prompts` hook is asked for when num_prompts is unset


class DataSection(Section, kw_only=True):
    """The prompts: a dataset file (`train`) or a `prompts` hook, exactly one; and the tokenizer
    (by default the checkpoint's own, with its chat template and eos ids)."""

    tokenizer: str | None = None
    """Import path of a `Tokenizer` object (or a class, instantiated with no arguments). Unset:
    the tokenizer in model.path, loaded with transformers (streamrl/data/tokenizer.py)."""
    prompts: str | None = None
    """Import path of a `PromptSource(PromptRequest) -> list[PromptSpec]`."""
    train: str | None = None
    """A dataset file: JSONL, parquet, or a directory written by `datasets.save_to_disk`. Rows
    follow veRL's convention (`prompt` as chat messages, `reward_model.ground_truth`,
    `data_source`, `extra_info`) or TRL's (`prompt` a string or chat messages); every column
    but the prompt reaches the reward as `RewardInput.metadata[column]`, and veRL's ground
    truth also as `metadata["ground_truth"]` (streamrl/data/dataset.py). Every row is checked
    when the recipe loads. A relative path is taken from the current directory."""
    eval: str | None = None
    """A held-out dataset file in the same formats, checked and rendered like `train`."""
    prompt_key: str = "prompt"
    """The column that holds the prompt (e.g. "question" for GSM8K's own parquet files)."""
    system_prompt: str | None = None
    """A system message put before each prompt's messages (rows that start with their own
    system message keep theirs)."""
    apply_chat_template: bool = True
    """Render prompts with the tokenizer's chat template (`add_generation_prompt=True`): chat
    messages as they are, a string prompt as one user message. false: string prompts are
    encoded as plain text (a base model's completion), and chat-message rows are refused."""
    shuffle: bool = True
    """Shuffle the dataset's rows, seeded by run.seed, afresh for every epoch."""
    epochs: int | None = None
    """Passes over `train` (default 1 unless num_prompts is set)."""
    num_prompts: int | None = None
    """How many prompts to publish: for a `prompts` hook, what it is asked for (default 1024);
    for `train`, taken in order from as many shuffled epochs as needed."""
    samples_per_prompt: int = 8
    """The GRPO group size: samples generated per prompt."""

    def __post_init__(self) -> None:
        if (self.prompts is None) == (self.train is None):
            raise ValueError("[data] needs exactly one of train (a dataset file) and prompts "
                             "(the import path of a PromptSource hook)"
                             + ("; remove one" if self.train is not None else ""))
        if self.prompts is not None and (self.eval is not None or self.epochs is not None):
            raise ValueError("data.eval and data.epochs apply to dataset files: with data.prompts "
                             "set data.num_prompts instead, or give data.train")
        if self.epochs is not None and self.num_prompts is not None:
            raise ValueError("data.epochs and data.num_prompts both set how many prompts the run "
                             "gets: keep one")
        for name in ("epochs", "num_prompts", "samples_per_prompt"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"data.{name} must be at least 1, got {value}")
        if self.system_prompt is not None and not self.apply_chat_template:
            raise ValueError("data.system_prompt is rendered by the chat template: set "
                             "data.apply_chat_template = true or remove data.system_prompt")


class RolloutSection(Section, kw_only=True):
    num_producers: int = 1
    """Rollout worker processes; they share the prompts stream through one consumer group."""
    max_producers: int = 16
    """Most producers the run can scale to (`streamrl scale`): the prompts stream gets this many
    partitions, and a producer owns whole partitions."""
    reward: RewardSpec
    """The reward: a built-in name ("math", "gsm8k", "exact", "regex", "format"), the import path
    of a `RewardFn(RewardInput) -> RewardOutput`, a table `{ name, weight, label, options }`, or
    a list of them, summed with their weights (streamrl/recipe/rewards.py, docs/rewards.md)."""
    reward_by_source: dict[str, RewardSpec] = {}
    """A reward per `data_source` (the prompt's metadata["data_source"], as veRL routes rows);
    rows from other sources, or none, get `reward`."""
    reward_timeout_s: float = 10.0
    """Each reward call runs in a reward worker process and is bounded by this: past it the
    worker is killed and restarted, and the sample gets reward 0 with status "timeout"."""
    reward_workers: int = 1
    """Reward worker processes per producer (a group's samples are scored concurrently)."""
    filter: str | None = None
    """A `SampleFilter(FilterInput) -> FilterOutput` by name ("zero_variance": DAPO's dynamic
    sampling, streamrl/recipe/filters.py) or import path, or none."""
    rollout: str = "streamrl.producers.rollout:sample_n"
    """Import path of an async `RolloutFn(RolloutInput) -> list[RolloutSample]`: how a prompt
    becomes its group (the default samples it n times; multi-turn rollouts plug in here)."""
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 16
    engine: EngineConfig = msgspec.field(default_factory=EngineConfig)
    engine_factory: str | None = None
    """A `(checkpoint: Path, options: dict) -> engine` that replaces the embedded torch engine:
    "vllm" or "sglang" (a running server; `ENGINES` in streamrl/recipe/engine.py) or an import
    path; None = torch."""
    engine_options: dict[str, Any] = msgspec.field(default_factory=dict)
    """Options handed to `engine_factory` (the fields of `VLLMConfig` / `SGLangConfig`)."""

    def __post_init__(self) -> None:
        if not 0 < self.reward_timeout_s < float("inf"):
            raise ValueError(f"rollout.reward_timeout_s ({self.reward_timeout_s}) must be a "
                             "positive number of seconds")
        if self.reward_workers < 1:
            raise ValueError(f"rollout.reward_workers ({self.reward_workers}) must be at least 1")


class TrainerSection(Section, kw_only=True):
    batch_size: int = 64
    """Samples per weight version; a multiple of data.samples_per_prompt (whole groups)."""
    lr: float = 1e-4
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    """Max global gradient norm (0 = off)."""
    minibatches: int = 1
    """Optimizer steps per version; with more than one the decoupled loss's proximal policy
    (the weights when the batch was formed) differs from the current one."""
    checkpoint_every: int = 5
    """Save model + optimizer state every N versions (resume replays batches after it)."""
    algorithm: AlgorithmConfig = msgspec.field(default_factory=AlgorithmConfig)
    step_hooks: tuple[str, ...] = ()
    """Import paths of `TrainStepHook(TrainStepInput) -> dict[str, float]`: extra metrics per
    step, recorded in TrainStep (consumers/trainer/hooks.py)."""
    compute: ComputeConfig = msgspec.field(default_factory=ComputeConfig)
    """Device, precision (bf16 with fp32 master weights), activation checkpointing, compile,
    FSDP2 (consumers/trainer/compute.py); the default is the bit-exact CPU path."""
    backend: Literal["torch", "megatron"] = "torch"
    """The learner's model: "torch" (streamrl/models) or "megatron" (a megatron-core GPTModel
    built from the same HF config, consumers/trainer/megatron/; needs CUDA and megatron-core).
    Same loss, optimizer and checkpoints in HF format; routing replay through RouterReplay."""
    megatron: MegatronConfig = msgspec.field(default_factory=MegatronConfig)
    """The megatron-core parallel layout (tensor, pipeline, expert sizes, recompute), which
    `streamrl plan` sizes; `streamrl run` trains on one GPU so far and refuses sizes above 1
    (streamrl/recipe/megatron.py)."""
    lora: LoraConfig | None = None
    """Train a LoRA adapter on the frozen base (torch backend only; docs/lora.md)."""
    qat: QatConfig | None = None
    """Quantization-aware training (`[trainer.qat] int4 = {...}`): the torch learner trains
    through int4 fake-quantized weights and the torch engine serves them as W4A16
    (docs/low-precision.md)."""


class WeightsSection(Section, kw_only=True):
    transport: str = "file"
    """How tensors move from trainer to producers, a key of `streamrl.weights.TRANSPORTS`:
    "file" (safetensors on a shared filesystem), "shm" (the trainer's machine), "cuda_ipc"
    (engines on the trainer's GPU) or "broadcast" (a process group, docs/multi-gpu.md)."""
    keep_versions: int = 4
    """Published versions kept available; older ones are released."""
    group_address: str = "127.0.0.1:29531"
    """"broadcast" only: host:port of the weight group's TCP store, served by the trainer
    (rank 0); every producer must reach it (docs/multi-gpu.md)."""
    group_backend: Literal["gloo", "nccl"] = "gloo"
    """"broadcast" only: "nccl" across GPUs, "gloo" on CPU."""
    slots: int | None = None
    """"cuda_ipc" only: device buffers in the trainer's ring (default max(2, keep_versions));
    engines map each once and a slot is reused only after every engine copied out of it."""
    dtype: Literal["bfloat16", "float16", "float32", "float8_e4m3fn"] | None = None
    """"float8_e4m3fn" (FP8 rollouts, any transport but "broadcast"): the trainer quantizes
    each version's linear projections on its device to FP8 in 128x128 blocks with fp32 scales
    (embeddings, norms, router and LM head stay bf16) and the torch engine runs them as FP8
    GEMMs: half the bytes to move; the announcement carries the trainer's digest and the FP8
    payload's own (streamrl/weights/fp8.py, docs/low-precision.md). "bfloat16", "float16",
    "float32": "cuda_ipc" only, cast the published tensors to the engine's dtype; the
    announced digest stays that of the trainer's tensors."""
    inline_max_bytes: int = 32 * 1024 * 1024
    """LoRA runs: a version (the adapter) of at most this many tensor bytes rides inside its
    announcement in the weights stream, so the log alone holds the run's weight history;
    larger ones go through `transport`. 0 sends every version through `transport`. At most
    60 MiB (a weights-stream record is at most 64 MiB)."""


class EvalSection(Section, kw_only=True):
    evaluate: str | None = None
    """Import path of an `Evaluator(EvalRequest) -> dict[str, float]`, run by the driver on the
    initial and the final weights (the before/after figures)."""
    every_versions: int = 0
    """Evaluate on `data.eval` every N weight versions (0: never): producer 0 samples each eval
    prompt `samples` times with the version it loaded and records mean@k and pass@k as an
    `EvalResult` event (producers/evaluate.py, docs/rewards.md). Never trained on."""
    samples: int = 4
    """k: samples per eval prompt (pass@1 and pass@k are reported)."""
    temperature: float | None = None
    """Sampling temperature of the eval samples (default: rollout.temperature)."""
    max_prompts: int | None = None
    """Evaluate the first N rows of data.eval only (default: every row): keeps each evaluation
    short next to training."""
    pass_threshold: float = 1.0
    """A sample passes (for pass@k) when its reward is at least this."""

    def __post_init__(self) -> None:
        if self.every_versions < 0:
            raise ValueError(f"eval.every_versions ({self.every_versions}) must be >= 0 "
                             "(0 turns periodic evaluation off)")
        if self.samples < 1 or (self.max_prompts is not None and self.max_prompts < 1):
            raise ValueError("eval.samples and eval.max_prompts must be >= 1")
        if self.temperature is not None and self.temperature < 0:
            raise ValueError(f"eval.temperature ({self.temperature}) must be >= 0")


class PlacementSection(Section, kw_only=True):
    """Where a run's processes go under Ray (`streamrl run --ray`); local runs ignore it."""

    mode: Literal["colocated", "disaggregated"] = "disaggregated"
    """colocated: trainer and producers packed on one node (sharing its GPUs: give fractions);
    disaggregated: spread over nodes, producers apart from the trainer where possible."""
    trainer_gpus: float = 0.0
    """GPUs the trainer actor asks for (0 on CPU: its bundle then asks for CPUs only)."""
    producer_gpus: float = 0.0
    """GPUs each producer actor asks for; with colocated and one GPU, e.g. 0.5 and 0.5."""
    trainer_cpus: float = 1.0
    producer_cpus: float = 1.0
    max_restarts: int = 3
    """How often Ray restarts an actor that died; it resumes from the log each time."""


MAX_TRAJECTORY_PARTITIONS = 64


class LogSection(Section, kw_only=True):
    """How the run's streams are laid out in the log (docs/log.md)."""

    trajectory_partitions: int = 1
    """Partitions of the trajectories stream, fixed when the run is created (a restart on a
    stream with another count is refused). Producers spread groups over them by group id; the
    trainer reads every partition, and each `BatchFormed` records the order it took records in,
    so replay, audit, forks and counterfactuals read the same records in the same order. More
    than 1 when MoE routing makes the stream outgrow one partition (BENCHMARKS.md,
    `log_throughput`)."""

    def __post_init__(self) -> None:
        if not 1 <= self.trajectory_partitions <= MAX_TRAJECTORY_PARTITIONS:
            raise ValueError(f"log.trajectory_partitions ({self.trajectory_partitions}) must be "
                             f"in [1, {MAX_TRAJECTORY_PARTITIONS}]")


class RunConfig(Section, kw_only=True):
    run: RunSection
    model: ModelSection
    data: DataSection
    rollout: RolloutSection
    trainer: TrainerSection = msgspec.field(default_factory=TrainerSection)
    staleness: StalenessConfig = msgspec.field(default_factory=StalenessConfig)
    weights: WeightsSection = msgspec.field(default_factory=WeightsSection)
    eval: EvalSection = msgspec.field(default_factory=EvalSection)
    placement: PlacementSection = msgspec.field(default_factory=PlacementSection)
    metrics: MetricsSection = msgspec.field(default_factory=MetricsSection)
    logging: LoggingSection = msgspec.field(default_factory=LoggingSection)
    log: LogSection = msgspec.field(default_factory=LogSection)

    def __post_init__(self) -> None:
        check_run_id(self.run.name)
        if self.data.tokenizer is None and self.model.path is None:
            raise ValueError("data.tokenizer is needed with model.init: name a Tokenizer by "
                             "import path, or start from model.path and use its tokenizer")
        group = self.data.samples_per_prompt
        if self.trainer.batch_size % group:
            raise ValueError(
                f"trainer.batch_size ({self.trainer.batch_size}) must be a multiple of "
                f"data.samples_per_prompt ({group}): batches hold whole GRPO groups")
        if group > self.rollout.engine.max_batch_size:
            raise ValueError(
                f"rollout.engine.max_batch_size ({self.rollout.engine.max_batch_size}) must be "
                f">= data.samples_per_prompt ({group}) so a group decodes together")
        if not 1 <= self.rollout.num_producers <= self.rollout.max_producers:
            raise ValueError(f"rollout.num_producers ({self.rollout.num_producers}) must be in "
                             f"[1, rollout.max_producers ({self.rollout.max_producers})]")
        if self.eval.every_versions and self.data.eval is None:
            raise ValueError(f"eval.every_versions = {self.eval.every_versions} needs the prompts "
                             "to evaluate on: set data.eval to a dataset file (like "
                             "data.train), or eval.every_versions = 0")
        w = self.weights
        fp8 = w.dtype == "float8_e4m3fn"
        if (w.slots is not None or (w.dtype is not None and not fp8)) and \
                w.transport != "cuda_ipc":
            raise ValueError(f"weights.slots and weights.dtype = {w.dtype!r} apply to the "
                             f"cuda_ipc transport only; weights.transport is {w.transport!r}")
        if fp8 and (w.transport == "broadcast" or self.trainer.lora is not None
                    or self.rollout.engine_factory is not None):
            raise ValueError("weights.dtype = \"float8_e4m3fn\" needs the embedded torch "
                             "engine (it runs the FP8 weights), full versions (no "
                             "[trainer.lora]) and a transport other than \"broadcast\" (its "
                             "manifest is the model's own); unset rollout.engine_factory or "
                             "[trainer.lora], or use transport = \"file\", \"shm\" or "
                             "\"cuda_ipc\"")
        if self.trainer.compute.precision == "fp8" and (self.trainer.backend != "torch"
                                                        or self.trainer.lora is not None):
            raise ValueError("trainer.compute.precision = \"fp8\" (torchao float8 linears) "
                             "needs trainer.backend = \"torch\" without [trainer.lora]; "
                             "set precision = \"bf16\" or change the backend")
        if w.slots is not None and w.slots < max(2, w.keep_versions):
            raise ValueError(f"weights.slots ({w.slots}) must be at least 2 and at least "
                             f"weights.keep_versions ({w.keep_versions}): a slot holds one "
                             "version, and the trainer writes one while engines read another")
        if not 0 <= w.inline_max_bytes <= 60 * 1024 * 1024:
            raise ValueError(f"weights.inline_max_bytes ({w.inline_max_bytes}) must be in "
                             "[0, 60 MiB]: an announcement is at most 64 MiB")
        compute = self.trainer.compute
        if self.trainer.backend == "megatron" and not compute.on_gpu:
            raise ValueError("trainer.backend = \"megatron\" needs a CUDA device: set "
                             "trainer.compute.device = \"cuda\" (megatron-core's forward runs "
                             "on CUDA only)")
        if self.trainer.backend == "megatron" and (compute.compile or compute.fsdp
                                                   or compute.activation_checkpointing is True):
            raise ValueError("trainer.backend = \"megatron\" does not take trainer.compute's "
                             "compile, fsdp or activation_checkpointing (the torch backend's); "
                             "unset them")
        if self.trainer.lora is not None and self.rollout.engine_factory is not None:
            raise ValueError("trainer.lora needs the embedded torch engine, which serves LoRA "
                             "versions (adapters); rollout.engine_factory engines such as the "
                             "SGLang adapter do not take them yet: unset rollout.engine_factory")
        if self.trainer.lora is not None and (self.trainer.backend != "torch" or compute.fsdp):
            raise ValueError("trainer.lora needs trainer.backend = \"torch\" without "
                             "compute.fsdp (the megatron backend and FSDP do not train LoRA "
                             "adapters here); remove [trainer.lora] or use the torch backend")
        if self.trainer.qat is not None and self.trainer.qat.int4 is not None and (
                self.trainer.backend != "torch" or self.trainer.lora is not None
                or self.rollout.engine_factory is not None):
            raise ValueError("trainer.qat.int4 needs trainer.backend = \"torch\", no "
                             "[trainer.lora] and the embedded torch engine (it serves the int4 "
                             "weights): unset those or remove [trainer.qat]")
        if self.trainer.qat is not None and self.trainer.qat.int4 is not None and \
                self.weights.dtype is not None:
            raise ValueError(f"trainer.qat.int4 needs weights.dtype unset (got "
                             f"{self.weights.dtype!r}): the engine quantizes the trainer's own "
                             "fp32 weights, as the trainer does (set trainer.qat.int4.publish "
                             "= \"int4\" to move fewer bytes)")
        if self.trainer.minibatches < 1 or self.trainer.batch_size % self.trainer.minibatches:
            raise ValueError(f"trainer.minibatches ({self.trainer.minibatches}) must divide "
                             f"trainer.batch_size ({self.trainer.batch_size})")
        algorithm = self.trainer.algorithm
        if algorithm.loss_config.entropy_coef > 0 and (compute.on_gpu
                                                       or self.trainer.backend != "torch"):
            raise ValueError("trainer.algorithm.loss_config.entropy_coef > 0 needs the CPU torch "
                             "learner (the fused GPU log-softmax computes no entropy): set "
                             "entropy_coef = 0 or trainer.compute.device = \"cpu\"")
        if algorithm.kl.reference == "producer" and self.rollout.engine_factory is not None:
            raise ValueError("trainer.algorithm.kl.reference = \"producer\" needs the embedded "
                             "torch engine (its producers score the reference with a torch copy "
                             "of the initial weights); with rollout.engine_factory set, use "
                             "reference = \"trainer\"")
        aggregation = algorithm.loss_config.aggregation
        if compute.micro_batched and aggregation != "token_mean":
            raise ValueError(f"trainer.compute.micro_batch_rows / micro_batch_tokens need "
                             f"trainer.algorithm.loss_config.aggregation = \"token_mean\" (got "
                             f"{aggregation!r}): only a token mean splits exactly over "
                             "micro-batches; unset the micro-batch size or change the aggregation")
        pack = algorithm.batch.pack_row_tokens
        if (compute.micro_batch_tokens is not None and pack is not None
                and pack > compute.micro_batch_tokens):
            raise ValueError(f"trainer.algorithm.batch.pack_row_tokens ({pack}) is above "
                             f"trainer.compute.micro_batch_tokens ({compute.micro_batch_tokens}):"
                             " every packed row would exceed the budget; raise micro_batch_tokens"
                             " to at least pack_row_tokens")
        if (algorithm.overlong is not None
                and algorithm.overlong.buffer_tokens > self.rollout.max_new_tokens):
            raise ValueError(f"trainer.algorithm.overlong.buffer_tokens "
                             f"({algorithm.overlong.buffer_tokens}) must be at most "
                             f"rollout.max_new_tokens ({self.rollout.max_new_tokens}): the "
                             "penalty ramps over the last buffer_tokens before the cap")


def load_recipe(path: str | Path) -> tuple[RunConfig, Hooks]:
    """Read and validate a recipe, resolving its hooks (the one resolution of this process: hand
    them to the run context); every problem is a `ConfigError` naming the file and field."""
    path = Path(path)
    try:
        config = msgspec.toml.decode(path.read_bytes(), type=RunConfig)
    except FileNotFoundError:
        raise ConfigError(f"recipe {str(path)!r} does not exist") from None
    except (msgspec.ValidationError, msgspec.DecodeError, ValueError) as error:
        raise ConfigError(f"{path}: {error}") from None
    try:
        _check_runnable(config)
        config = _with_absolute_paths(config)
        _check_memory_limit(config)
        hooks = resolve_hooks(config)
        if config.model.path is not None:
            check_fits(hooks.tokenizer, Path(config.model.path))
        check_prompts(hooks)  # reads and renders every dataset row: a bad one fails here
        return config, hooks
    except ValueError as error:
        raise ConfigError(f"{path}: {error}") from None


def _check_runnable(config: RunConfig) -> None:
    """What a recipe may describe but this repository cannot run yet: a multi-GPU megatron
    layout (`streamrl plan` sizes it)."""
    m = config.trainer.megatron
    if not m.is_single_gpu:
        raise ValueError(f"trainer.megatron sets tensor_parallel={m.tensor_parallel}, "
                         f"pipeline_parallel={m.pipeline_parallel}, expert_parallel="
                         f"{m.expert_parallel}: the megatron backend trains on one GPU so far, "
                         "so this recipe can be planned (`streamrl plan`) but not run; set "
                         "them to 1 to run on one GPU")


def _check_memory_limit(config: RunConfig) -> None:
    """With `trainer.compute.memory_limit` a size and the checkpoint named, the worst training
    step is checked here, before anything is written (the trainer checks again, on its device,
    whatever the limit: consumers/trainer/memory.py)."""
    limit = config.trainer.compute.memory_limit_bytes
    if limit is None or config.model.path is None or config.trainer.backend != "torch":
        return
    from streamrl.plan.learner import check_peak  # the planner imports this module

    hf_config = json.loads((Path(config.model.path) / "config.json").read_text())
    check_peak(config, hf_config, limit=limit, where="memory_limit")


def _check_model_type(checkpoint: Path) -> None:
    """A checkpoint whose architecture the model code does not implement is refused here, before
    anything is written, rather than when the first process loads it."""
    from streamrl.models.config import FAMILIES
    model_type = json.loads((checkpoint / "config.json").read_text()).get("model_type")
    if model_type not in FAMILIES:
        raise ValueError(f"model.path {str(checkpoint)!r} is a {model_type!r} model, which "
                         f"streamrl's model code does not implement yet (it runs "
                         f"{', '.join(FAMILIES)}); `streamrl plan` still sizes it")


def _with_absolute_paths(config: RunConfig) -> RunConfig:
    """model.path, data.train and data.eval made absolute (every process of the run reads them,
    wherever it starts) and checked to exist."""
    fields = {"model.path": config.model.path, "data.train": config.data.train,
              "data.eval": config.data.eval}
    absolute: dict[str, str] = {}
    for name, value in fields.items():
        if value is None:
            continue
        where = Path(value).expanduser().absolute()
        if not where.exists():
            raise ValueError(f"{name} {value!r} does not exist ({where})")
        if name == "model.path" and not (where / "config.json").is_file():
            raise ValueError(f"model.path {value!r} is not an HF checkpoint directory: no "
                             f"config.json in {where}")
        if name == "model.path":
            _check_model_type(where)
        absolute[name.split(".")[1]] = str(where)
    model = msgspec.structs.replace(config.model, path=absolute.get("path", config.model.path))
    data = msgspec.structs.replace(config.data, train=absolute.get("train", config.data.train),
                                   eval=absolute.get("eval", config.data.eval))
    return msgspec.structs.replace(config, model=model, data=data)


def load_config(path: str | Path) -> RunConfig:
    """`load_recipe` without its hooks, for callers that only read the config."""
    return load_recipe(path)[0]


def config_from_builtins(data: dict[str, Any]) -> RunConfig:
    """Rebuild a config recorded in `RunStarted` (replay, resume, producers in other processes)."""
    return msgspec.convert(data, RunConfig)
