"""`Learner`: the model, its optimizer and one RL step per weight version.

A step is a pure function of (weights, optimizer state, batch rows, per-sample weights, config):
no clock, no global RNG, so replaying the recorded batches reproduces every version bit for bit
on CPU. Checkpoints hold model + optimizer state; resume loads one and replays the batches after.

With `loss_config.kl_coef > 0` the learner also holds the reference policy, a frozen copy of the
run's initial checkpoint (`LearnerSetup.reference`, reference.py), loaded on the first step;
with `entropy_coef > 0` the current policy's entropy is computed with its logprobs (CPU path).
`[trainer.algorithm.overlong]` shapes the rewards (DAPO) before the advantage.
`[trainer.algorithm] correction` weighs each token by a train/rollout mismatch policy computed
once per step (correction.py); `[trainer.qat] int4` trains through int4 fake-quantized weights.

On CUDA (`trainer.compute`, see compute.py) the same step runs in bf16 with fp32 master
weights, with the LM head's log-softmax chunked and recomputed in backward
(`fused_token_logprobs`), so no fp32 [tokens, vocab] logits tensor is ever materialized.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import pyarrow as pa
import torch
from torch import Tensor

from streamrl.checkpoints import OPTIMIZER_FILE
from streamrl.consumers.trainer import lora
from streamrl.consumers.trainer.advantages import at_last_response, overlong_penalty
from streamrl.consumers.trainer.batch import TrainBatch, build_batch
from streamrl.consumers.trainer.compute import (
    autocast,
    full_tensor,
    optimizer,
    place,
)
from streamrl.consumers.trainer.correction import mismatch_metrics
from streamrl.consumers.trainer.memory import micro_batches
from streamrl.consumers.trainer.reference import ReferencePolicy, kl_reward
from streamrl.hooks.train import (
    AdvantageFn,
    Correction,
    CorrectionFn,
    CorrectionInput,
    LossFn,
    LossInput,
)
from streamrl.models import CausalLM, fused_token_logprobs, load_checkpoint, token_logprobs
from streamrl.models.checkpoint import save_checkpoint, to_hf_names
from streamrl.models.quant import fake_quantize
from streamrl.recipe.config import RunConfig, TrainerSection
from streamrl.recipe.hooks import Hooks


class LearnerSetup(msgspec.Struct, kw_only=True, frozen=True):
    """What a learner is built from: the recipe's trainer section as it is, the sampler's
    temperature (logprobs are compared at it) and the resolved advantage and loss hooks."""

    trainer: TrainerSection
    temperature: float
    advantage: AdvantageFn
    loss: LossFn
    reference: Path | None = None
    """The run's initial checkpoint (`RunContext.init_checkpoint`): the KL reference policy.
    Needed only with loss_config.kl_coef > 0."""
    max_new_tokens: int | None = None
    """rollout.max_new_tokens, the L_max of overlong shaping. Needed only with `overlong`."""
    correction: CorrectionFn | None = None
    """The resolved `[trainer.algorithm] correction` (correction.py); None: the loss's own cap."""

    @classmethod
    def of_run(cls, config: RunConfig, hooks: Hooks, *,
               reference: Path | None = None) -> LearnerSetup:
        """A run's learner setup: its trainer section, the hooks its context resolved and, for a
        KL penalty, the run's initial checkpoint as `reference`."""
        return cls(trainer=config.trainer, temperature=config.rollout.temperature or 1.0,
                   advantage=hooks.advantage, loss=hooks.loss, reference=reference,
                   max_new_tokens=config.rollout.max_new_tokens, correction=hooks.correction)


class Learner:
    _reference: ReferencePolicy | None = None  # loaded on the first step that needs it

    def __init__(self, model: CausalLM, setup: LearnerSetup) -> None:
        self.setup, self.trainer = setup, setup.trainer
        self.compute = setup.trainer.compute
        aggregation = self.trainer.algorithm.loss_config.aggregation
        if self.compute.micro_batched and aggregation != "token_mean":
            raise ValueError(f"compute.micro_batch_rows / micro_batch_tokens need loss "
                             f"aggregation = \"token_mean\" (got {aggregation!r}): only a token "
                             "mean splits exactly over micro-batches; unset the micro-batch "
                             "size or change the aggregation")
        self.model_config = model.config  # the HF-style config, whatever wraps the model
        if self.trainer.lora is not None:  # adapters on a frozen base (lora.py)
            lora.attach(model, self.trainer.lora)
        if self.trainer.qat is not None and self.trainer.qat.int4 is not None:
            fake_quantize(model, self.trainer.qat.int4.spec())  # INT4 QAT (models/quant.py)
        self.model = place(model, self.compute)
        if self.trainer.lora is not None:
            lora.store_base(self.model, self.compute)
        self.advantage_fn, self.loss_fn = setup.advantage, setup.loss
        self.optimizer = optimizer(self.model, self.compute, lr=self.trainer.lr,
                                   weight_decay=self.trainer.weight_decay)

    @classmethod
    def from_checkpoint(cls, path: Path, setup: LearnerSetup) -> Learner:
        learner = cls(load_checkpoint(path), setup)
        if setup.trainer.lora is not None:
            lora.load_saved_adapter(learner.model, path)
        learner.load_optimizer(path)
        return learner

    def load_optimizer(self, path: Path) -> None:
        """The optimizer state `save` wrote next to the weights, when there is one."""
        optimizer_file = Path(path) / OPTIMIZER_FILE
        if optimizer_file.exists():
            self.optimizer.load_state_dict(torch.load(optimizer_file, weights_only=True,
                                                      map_location=self.compute.device))

    def reconfigured(self, setup: LearnerSetup) -> Learner:
        """This learner's weights and optimizer state under `setup`'s settings (a fork's or a
        replay's): `load_state_dict` restores the saved lr and weight decay, so they are set
        again from `setup` afterwards."""
        ours = self._with_setup(setup)
        ours.optimizer.load_state_dict(self.optimizer.state_dict())
        for group in ours.optimizer.param_groups:
            group["lr"] = setup.trainer.lr
            group["weight_decay"] = setup.trainer.weight_decay
        return ours

    def _with_setup(self, setup: LearnerSetup) -> Learner:
        return Learner(self.model, setup)

    def save(self, path: Path) -> None:
        """Model in HF format plus optimizer state: everything a resume needs."""
        save_checkpoint(self.model, path)  # a LoRA model's state is its base alone
        if self.trainer.lora is not None:
            lora.save_adapter(self.model, self.trainer.lora, path)
        torch.save(self.optimizer.state_dict(), path / OPTIMIZER_FILE)

    def hf_state_dict(self) -> dict[str, Tensor]:
        """The weights under HF names, as producers load them (a LoRA run's: the adapter)."""
        if self.trainer.lora is not None:
            adapter = lora.adapter_tensors(self.model, self.trainer.lora)
            return {k: full_tensor(v) for k, v in adapter.items()}
        state = {k: full_tensor(v) for k, v in self.model.state_dict().items()}
        return to_hf_names(state, self.model.config)

    def logprobs(self, batch: TrainBatch, model: CausalLM | None = None) -> Tensor:
        """log pi(target) at every position [B, S], replaying recorded MoE routing; with
        `model` (the frozen reference), that model's, computed the same way. Without grad
        (proximal, reference) and with micro-batches set, one micro-batch at a time, so those
        forwards never hold more than a training micro-batch does (memory.py)."""
        model = self.model if model is None else model
        if self.compute.micro_batch_tokens is not None and not torch.is_grad_enabled():
            out = torch.zeros(batch.tokens.shape, device=batch.tokens.device)
            for index in micro_batches(batch, slice(0, batch.tokens.shape[0]), self.compute,
                                       multiple=self.trainer.algorithm.batch.pad_to_multiple_of):
                out[index] = self._logprobs(_rows(batch, index), model)
            return out
        return self._logprobs(batch, model)

    def _logprobs(self, batch: TrainBatch, model: CausalLM) -> Tensor:
        with autocast(self.compute):
            out = model(batch.tokens, batch.positions, forced_routing=batch.forced_routing,
                        routing_mask=batch.routing_mask, return_hidden=True)
            if not self.compute.on_gpu:  # the CPU path, bit-exact on replay
                return token_logprobs(out.hidden, model.lm_head.weight, batch.targets,
                                      temperature=self.setup.temperature)[0]
            return fused_token_logprobs(
                out.hidden, model.lm_head.weight, batch.targets,
                temperature=self.setup.temperature,
                chunk_size=self.compute.logprob_chunk_tokens, compiled=self.compute.compile)

    def step(self, rows: Sequence[pa.RecordBatch], sample_weights: Sequence[float],
             version: int) -> dict[str, float]:
        """One version: advantages over the whole batch, then `minibatches` optimizer steps.
        `sample_weights` (from the staleness policy, one per sample in row order) scale each
        sample's advantages. Returns the metrics of the step."""
        started = time.perf_counter()
        self._version, self._num_policy_passes = version, 0  # seeds LoRA dropout per pass
        cpu_batch = build_batch(rows, self.trainer.algorithm.batch)
        metrics: dict[str, float] = {}
        batch = cpu_batch.to(self.compute.torch_device) if self.compute.on_gpu else cpu_batch
        policy = None
        if self._one_policy_pass():  # its values are the proximal logprobs: one forward, not two
            policy = self.logprobs(batch)
            proximal = policy.detach()
        else:
            with torch.no_grad():
                proximal = self.logprobs(batch)
        reference = self._reference_logprobs(batch)
        behavior, mismatch = self._correction(batch, proximal, version)
        shaping: dict[str, float] = {}
        advantages = self._advantages(cpu_batch, proximal, reference, shaping)
        advantages = advantages * _per_position(cpu_batch, sample_weights)
        advantages = advantages.to(self.compute.torch_device)
        if self.trainer.algorithm.kl.penalty == "reward":
            reference = None  # it acted through the rewards; the loss adds no KL term
        for rows_mb in _split(batch.tokens.shape[0], self.trainer.minibatches):
            self.optimizer.zero_grad(set_to_none=True)
            step_metrics = self._accumulate(batch, rows_mb, proximal, advantages, version,
                                            reference, behavior, policy)
            if self.trainer.grad_clip > 0:
                norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(),
                                                      self.trainer.grad_clip)
                metrics["grad_norm"] = metrics.get("grad_norm", 0.0) + float(norm)
            self.optimizer.step()
            for k, v in step_metrics.items():
                metrics[k] = metrics.get(k, 0.0) + v
        n = self.trainer.minibatches
        metrics = {k: v / n for k, v in metrics.items()}
        metrics["reward_mean"] = float(batch.rewards.float().mean())
        metrics.update(shaping)
        metrics.update(mismatch)
        # Throughput, for people (the GPU run's training tok/s): the clock never feeds the
        # weights, so replay stays exact; `step_ms` is the one metric that differs on replay.
        metrics["train_tokens"] = float(batch.positions.numel() - int((batch.segments < 0).sum()))
        metrics["step_ms"] = (time.perf_counter() - started) * 1e3
        return metrics


    def _one_policy_pass(self) -> bool:
        """Whether the step makes exactly one policy pass over the whole batch, without dropout
        or entropy, in the CPU path: then that pass's logprobs, detached, equal the proximal
        forward's bit for bit (same weights, rows and kernels), and the no-grad forward is
        skipped (a quarter of a CPU step). Elsewhere (minibatches, micro-batches, LoRA dropout,
        a backend with its own logprobs, CUDA) the proximal forward runs on its own."""
        lora = self.trainer.lora
        return (self.trainer.minibatches == 1 and not self.compute.micro_batched
                and not self.compute.on_gpu and (lora is None or lora.dropout == 0)
                and self.trainer.algorithm.loss_config.entropy_coef <= 0
                and type(self).logprobs is Learner.logprobs)

    def _policy(self, batch: TrainBatch, *, with_entropy: bool) -> tuple[Tensor, Tensor | None]:
        """log pi(target) [B, S] with grad, and the entropy when asked (CPU path only)."""
        if self.trainer.lora is not None and self.trainer.lora.dropout > 0:
            self._num_policy_passes += 1
            with lora.seeded_dropout(self.trainer.lora, self._version, self._num_policy_passes,
                                     self.compute):
                return self._policy_pass(batch, with_entropy=with_entropy)
        return self._policy_pass(batch, with_entropy=with_entropy)

    def _policy_pass(self, batch: TrainBatch, *,
                     with_entropy: bool) -> tuple[Tensor, Tensor | None]:
        if not with_entropy:
            return self.logprobs(batch), None
        out = self.model(batch.tokens, batch.positions, forced_routing=batch.forced_routing,
                         routing_mask=batch.routing_mask, return_hidden=True)
        return token_logprobs(out.hidden, self.model.lm_head.weight, batch.targets,
                              temperature=self.setup.temperature, with_entropy=True)

    def _advantages(self, batch: TrainBatch, proximal: Tensor, reference: Tensor | None,
                    metrics: dict[str, float]) -> Tensor:
        """[B, S] advantages of the CPU `batch`, after the reward shaping the recipe asks for:
        DAPO's overlong penalty on each sample's reward (and its last token's), and with
        `kl.penalty = "reward"` -kl_coef * KL(prox || ref) on every trained token (summed per
        sample for sample-level estimators). Shaping metrics go to `metrics`."""
        algorithm = self.trainer.algorithm
        inp = batch.advantage_input()
        if algorithm.overlong is not None:
            shaping = self._overlong(batch)
            metrics["overlong_penalty_mean"] = float(shaping.mean())
            inp = msgspec.structs.replace(inp, rewards=(batch.rewards.double() + shaping).float(),
                                          token_rewards=None if inp.token_rewards is None else
                                          inp.token_rewards + at_last_response(
                                              shaping.float(), batch.segments, batch.versions))
        if algorithm.kl.penalty == "reward":
            assert reference is not None  # a kl section needs kl_coef > 0 (AlgorithmConfig)
            config = algorithm.loss_config
            kl = kl_reward(proximal.cpu(), reference.cpu(), batch.loss_mask,
                           estimator=config.kl_estimator, max_log_ratio=config.max_log_ratio)
            num = batch.loss_mask.sum().clamp(min=1)
            metrics["kl_reward_mean"] = float(kl.double().sum() / num)
            token_rewards = (inp.token_rewards if inp.token_rewards is not None
                             else at_last_response(inp.rewards, batch.segments, batch.versions))
            per_sample = torch.zeros(batch.num_samples, dtype=torch.float64).index_add_(
                0, batch.segments.clamp(min=0).reshape(-1), kl.double().reshape(-1))
            inp = msgspec.structs.replace(
                inp, rewards=(inp.rewards.double() - config.kl_coef * per_sample).float(),
                token_rewards=token_rewards - config.kl_coef * kl)
        return self.advantage_fn(inp)

    def _overlong(self, batch: TrainBatch) -> Tensor:
        """[N] DAPO's overlong penalty per sample, from its number of response tokens."""
        overlong = self.trainer.algorithm.overlong
        assert overlong is not None
        if self.setup.max_new_tokens is None:
            raise ValueError("trainer.algorithm.overlong needs the run's rollout.max_new_tokens "
                             "(build the learner with LearnerSetup.of_run)")
        response = (batch.versions >= 0).reshape(-1)  # versions are set on response targets
        lengths = torch.zeros(batch.num_samples, dtype=torch.long).index_add_(
            0, batch.segments.clamp(min=0).reshape(-1), response.long())
        return overlong_penalty(lengths, max_new_tokens=self.setup.max_new_tokens,
                                buffer_tokens=overlong.buffer_tokens, penalty=overlong.penalty)

    def _correction(self, batch: TrainBatch, proximal: Tensor,
                    version: int) -> tuple[Correction | None, dict[str, float]]:
        """The step's train/rollout mismatch correction over the whole batch (None without a
        policy) and its metrics (correction.py), from prox and the engine's logprobs; "fresh"
        tokens are those sampled by version - 1, the weights prox is computed with."""
        config = self.trainer.algorithm.loss_config
        behavior = None
        if self.setup.correction is not None:
            behavior = self.setup.correction(CorrectionInput(
                train_logprobs=proximal, rollout_logprobs=batch.old_logprobs,
                loss_mask=batch.loss_mask, config=self.trainer.algorithm.correction_config,
                max_log_ratio=config.max_log_ratio, segments=batch.segments))
        return behavior, mismatch_metrics(proximal, batch.old_logprobs, batch.loss_mask,
                                          behavior, max_log_ratio=config.max_log_ratio,
                                          fresh=batch.versions == version - 1)

    def _reference_logprobs(self, batch: TrainBatch) -> Tensor | None:
        """log ref(target) [B, S] from the frozen initial weights, or None without a KL term:
        the producer's recorded `reference_logprobs` under `kl.reference = "producer"`, else
        this learner's own forward through the reference model."""
        if self.trainer.algorithm.loss_config.kl_coef <= 0:
            return None
        if self.trainer.algorithm.kl.reference == "producer":
            if batch.reference_logprobs is None:
                raise ValueError(
                    f"[trainer.algorithm.kl] reference = \"producer\" but sample "
                    f"{batch.no_reference[0]!r} has no reference_logprobs: its producer did not "
                    "score the reference (a run recorded without this setting, or an engine "
                    "that does not); set reference = \"trainer\" to compute it in the learner")
            return batch.reference_logprobs
        if self._reference is None:
            if self.setup.reference is None:
                raise ValueError("loss_config.kl_coef > 0 needs the run's initial checkpoint as "
                                 "the reference: build the learner with LearnerSetup.of_run("
                                 "..., reference=ctx.init_checkpoint)")
            self._reference = ReferencePolicy(self.setup.reference, self.compute.torch_device)
        with torch.no_grad():
            return Learner.logprobs(self, batch, self._reference.model)

    def _accumulate(self, batch: TrainBatch, rows_mb: slice, proximal: Tensor,
                    advantages: Tensor, version: int, reference: Tensor | None = None,
                    behavior: Correction | None = None,
                    policy: Tensor | None = None) -> dict[str, float]:
        """Gradients of one minibatch's loss, accumulated over its micro-batches (one when
        `micro_batch_rows` and `micro_batch_tokens` are unset; memory.py). With several, each
        micro-batch backpropagates its token sum (token-mean loss x its trained tokens) and
        the summed gradients are divided by the minibatch's trained tokens once at the end:
        exactly the minibatch's token-mean loss, whatever tokens the loss masks. Metrics are
        token-weighted means (maxima: the max)."""
        micros = micro_batches(batch, rows_mb, self.compute,
                               multiple=self.trainer.algorithm.batch.pad_to_multiple_of)
        parts: list[dict[str, float]] = []
        for rows in micros:
            mb = _rows(batch, rows)
            config = self.trainer.algorithm.loss_config
            logprobs, entropy = ((policy, None) if policy is not None  # the step's one pass
                                 else self._policy(mb, with_entropy=config.entropy_coef > 0))
            out = self.loss_fn(LossInput(
                logprobs=logprobs, old_logprobs=mb.old_logprobs,
                proximal_logprobs=proximal[rows], advantages=advantages[rows],
                loss_mask=mb.loss_mask, versions=mb.versions, current_version=version,
                config=config, segments=mb.segments, entropy=entropy,
                reference_logprobs=None if reference is None else reference[rows],
                behavior=None if behavior is None else Correction(
                    weight=behavior.weight[rows], rejected=behavior.rejected[rows])))
            (out.loss if len(micros) == 1 else out.loss * out.metrics["num_tokens"]).backward()
            parts.append(out.metrics)
        if len(parts) == 1:
            return parts[0]
        total = sum(m["num_tokens"] for m in parts)
        grads = [q.grad for q in self.model.parameters() if q.grad is not None]
        torch._foreach_div_(grads, max(total, 1.0))
        metrics: dict[str, float] = {}
        for k in parts[0]:
            values = [m[k] for m in parts]
            if k.endswith("_max"):
                metrics[k] = max(values)
            elif k == "num_tokens":
                metrics[k] = total
            else:
                metrics[k] = sum(v * m["num_tokens"] for v, m in zip(values, parts, strict=True)
                                 ) / max(total, 1.0)
        return metrics

def _split(num_rows: int, parts: int) -> list[slice]:
    size = -(-num_rows // parts)
    return [slice(i, min(i + size, num_rows)) for i in range(0, num_rows, size)]


def _rows(batch: TrainBatch, rows: slice | tuple[slice, slice]) -> TrainBatch:
    fields: dict[str, Any] = {}
    for f in msgspec.structs.fields(batch):
        value = getattr(batch, f.name)
        fields[f.name] = value[rows] if isinstance(value, Tensor) and value.dim() >= 2 else value
    return TrainBatch(**fields)


def _per_position(batch: TrainBatch, sample_weights: Sequence[float]) -> Tensor:
    """[B, S] weight of the sample each position belongs to (1 on padding)."""
    w = torch.tensor([*sample_weights, 1.0], dtype=torch.float32)
    return w[batch.segments.long()]  # segments: -1 on padding picks the trailing 1.0
