"""The trainer at long sequences (CPU, fp32): micro-batches cut by a budget of tokens,
activation checkpointing on above a length, and the peak of the worst step predicted and
checked before anything trains (consumers/trainer/memory.py, streamrl/plan/learner.py)."""

from __future__ import annotations

import copy

import msgspec
import pytest
import torch

from streamrl.consumers.trainer import decoupled_ppo, grpo
from streamrl.consumers.trainer.batch import build_batch
from streamrl.consumers.trainer.compute import checkpoint_above
from streamrl.consumers.trainer.learner import Learner, LearnerSetup
from streamrl.consumers.trainer.memory import TrainerMemoryError, check_memory, micro_batches
from streamrl.models import CausalLM, ModelConfig
from streamrl.plan import count_params, read_shape
from streamrl.plan.learner import learner_peak
from streamrl.plan.memory import torch_learner_memory
from streamrl.recipe.config import RunConfig, TrainerSection
from streamrl.recipe.trainer import AlgorithmConfig, BatchConfig, ComputeConfig
from tests.trainer.helpers import sample, tiny_model

BASE = (b'[run]\nname = "long"\n[model]\ninit = "a:b"\n[data]\ntokenizer = "a:b"\n'
        b'prompts = "a:b"\n[rollout]\nreward = "a:b"\n')


def recipe(extra: str) -> RunConfig:
    return msgspec.toml.decode(BASE + extra.encode(), type=RunConfig)


def _learner(compute: ComputeConfig, model, *, minibatches: int = 1,
             batch: BatchConfig | None = None) -> Learner:
    return Learner(copy.deepcopy(model), LearnerSetup(
        trainer=TrainerSection(lr=1e-3, weight_decay=0.0, grad_clip=1.0, minibatches=minibatches,
                               algorithm=AlgorithmConfig(batch=batch or BatchConfig()),
                               compute=compute),
        temperature=1.0, advantage=grpo, loss=decoupled_ppo))


def _uneven_rows():
    """Six samples of 4 to 15 tokens, two groups, unequal trained tokens."""
    lengths = [12, 1, 2, 9, 3, 2]
    return [sample([1, 2, 3], [(4 + i + k) % 30 for k in range(n)], reward=float(i % 3 == 0),
                   group_id=f"g{i // 3}", sample_id=str(i), logprobs=[-1.0] * n)
            for i, n in enumerate(lengths)]


def test_micro_batches_follow_the_token_budget_and_trim_padding() -> None:
    batch = build_batch(_uneven_rows())  # row fills 15, 4, 5, 12, 6, 5
    cuts = micro_batches(batch, slice(0, 6), ComputeConfig(micro_batch_tokens=16))
    assert [(r.start, r.stop, c.stop) for r, c in cuts] == [(0, 1, 15), (1, 3, 5),
                                                            (3, 4, 12), (4, 6, 6)]
    for rows, cols in cuts:  # within budget, unless one row alone is longer
        assert (rows.stop - rows.start) * cols.stop <= 16 or rows.stop - rows.start == 1
        assert bool((batch.segments[rows, cols.stop:] < 0).all())  # only padding cut off
    rounded = micro_batches(batch, slice(0, 6), ComputeConfig(micro_batch_tokens=16), multiple=8)
    assert all(c.stop % 8 == 0 for _, c in rounded)
    by_rows = micro_batches(batch, slice(2, 6), ComputeConfig(micro_batch_rows=3))
    assert [(r.start, r.stop) for r, _ in by_rows] == [(2, 5), (5, 6)]


def test_token_budget_micro_batches_train_the_same_step_as_one_pass() -> None:
    """Minibatches of unequal rows, cut by a token budget and trimmed: the same metrics and,
    to Adam's rounding, the same weights as the unsplit step (a plain mean of the micro-batch
    losses would move weights by the step size)."""
    model, rows = tiny_model(seed=0), _uneven_rows()
    whole = _learner(ComputeConfig(), model, minibatches=2)
    micro = _learner(ComputeConfig(micro_batch_tokens=16), model, minibatches=2)
    for version in range(2):
        m_whole = whole.step(rows, [1.0] * 6, version)
        m_micro = micro.step(rows, [1.0] * 6, version)
        for k in ("loss", "num_tokens", "ratio_mean", "tis_weight_max", "grad_norm"):
            assert m_micro[k] == pytest.approx(m_whole[k], rel=1e-5, abs=1e-6), k
    state = micro.hf_state_dict()
    for name, p in whole.hf_state_dict().items():
        assert float((state[name] - p).abs().max()) < 5e-5, name


def test_other_aggregations_and_oversized_packing_are_refused_at_load() -> None:
    """A micro-batch does not know its minibatch's sample count, so only "token_mean" splits
    exactly: the recipe is refused, naming the fix, and so is a learner built from code."""
    for aggregation in ("seq_mean", "seq_sum_norm"):
        norm = "norm_tokens = 8\n" if aggregation == "seq_sum_norm" else ""
        with pytest.raises(msgspec.ValidationError, match="token_mean"):
            recipe(f'[trainer.compute]\nmicro_batch_tokens = 64\n[trainer.algorithm.loss_config]'
                   f'\naggregation = "{aggregation}"\n{norm}')
    with pytest.raises(msgspec.ValidationError, match="at least pack_row_tokens"):
        recipe("[trainer.compute]\nmicro_batch_tokens = 64\n"
               "[trainer.algorithm.batch]\npack_row_tokens = 128\n")
    with pytest.raises(msgspec.ValidationError, match="not both"):
        recipe("[trainer.compute]\nmicro_batch_tokens = 64\nmicro_batch_rows = 2\n")
    with pytest.raises(ValueError, match="token_mean"):
        Learner(tiny_model(), LearnerSetup(
            trainer=TrainerSection(algorithm=msgspec.convert(
                {"loss_config": {"aggregation": "seq_mean"}}, AlgorithmConfig),
                compute=ComputeConfig(micro_batch_tokens=64)),
            temperature=1.0, advantage=grpo, loss=decoupled_ppo))


def _saved_bytes(model: CausalLM, tokens: torch.Tensor, positions: torch.Tensor) -> int:
    """Bytes of the activations autograd keeps for backward (parameters excluded)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            storages[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.model(tokens, positions)
    return sum(storages.values())


def test_checkpointing_keeps_gradients_bit_identical_and_saves_activation_memory() -> None:
    model = tiny_model(seed=1)
    tokens = torch.randint(0, 32, (2, 96))
    positions = torch.cat([torch.arange(40), torch.arange(56)]).expand(2, 96)  # packed rows
    grads, saved = [], []
    for above in (None, 0):
        model.model.checkpoint_above = above
        model.zero_grad(set_to_none=True)
        hidden = model(tokens, positions, return_hidden=True).hidden
        (hidden.square().mean()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()
                      if p.grad is not None})  # the LM head is not in this forward
        saved.append(_saved_bytes(model, tokens, positions))
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for name, g in grads[0].items():
        assert torch.equal(g, grads[1][name]), name
    assert saved[1] < 0.6 * saved[0], saved


def test_auto_checkpointing_turns_on_above_its_length_and_trains_identically() -> None:
    assert checkpoint_above(ComputeConfig()) == 4096  # "auto" is the default
    assert checkpoint_above(ComputeConfig(activation_checkpointing=True)) == 0
    assert checkpoint_above(ComputeConfig(activation_checkpointing=False)) is None
    compute = ComputeConfig(checkpoint_above_tokens=10)
    learner = _learner(compute, tiny_model(seed=2))
    short = torch.arange(8).expand(2, 8)
    long = torch.arange(24).expand(2, 24)
    with_grad = learner.model.model
    off_short = _saved_bytes(learner.model, short, short) / 8
    auto_long = _saved_bytes(learner.model, long, long) / 24
    with_grad.checkpoint_above = None
    off_long = _saved_bytes(learner.model, long, long) / 24
    assert auto_long < 0.6 * off_long and off_short == pytest.approx(off_long, rel=0.1)
    # the whole step: auto (checkpointing the 15-token rows) equals never, bit for bit
    rows = _uneven_rows()
    never = _learner(ComputeConfig(activation_checkpointing=False), tiny_model(seed=2))
    auto = _learner(compute, tiny_model(seed=2))
    for version in range(2):
        assert auto.step(rows, [1.0] * 6, version)["loss"] == never.step(
            rows, [1.0] * 6, version)["loss"]
    for name, p in never.hf_state_dict().items():
        assert torch.equal(auto.hf_state_dict()[name], p), name


RAW = {"model_type": "qwen3", "vocab_size": 512, "hidden_size": 128, "intermediate_size": 384,
       "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
       "head_dim": 32, "tie_word_embeddings": False, "rope_theta": 1e6,
       "max_position_embeddings": 4096}


@pytest.mark.parametrize("packed", [False, True])
def test_fp32_activation_term_matches_what_autograd_keeps(packed: bool) -> None:
    """The planner's fp32 activation term (the CPU learner) against the bytes autograd saves
    in a forward of the model, plain and packed rows (whose [S, S] mask SDPA keeps a float
    copy of per layer)."""
    torch.manual_seed(0)
    model = CausalLM(ModelConfig.from_hf_dict(RAW))
    rows, seq = 2, 256
    tokens = torch.randint(0, 512, (rows, seq))
    positions = (torch.cat([torch.arange(100), torch.arange(156)]) if packed
                 else torch.arange(seq)).expand(rows, seq)
    shape = read_shape(RAW)
    planned = torch_learner_memory(shape, count_params(shape), rows=rows, seq_len=seq,
                                   recompute=False, autocast=False, packed=packed)
    assert planned.activations == pytest.approx(_saved_bytes(model, tokens, positions), rel=0.05)


def test_the_worst_step_is_refused_before_training_naming_numbers_and_fix() -> None:
    config = recipe('engine = { max_seq_len = 8192 }\n[trainer]\nbatch_size = 16\n'
                    '[trainer.compute]\nmemory_limit = "1GiB"\n')
    peak = learner_peak(config, RAW)
    assert (peak.rows, peak.row_tokens, peak.checkpointing) == (16, 8192, True)
    with pytest.raises(TrainerMemoryError) as error:
        check_memory(config, RAW)
    message = str(error.value)
    for words in ("GiB but 1.0 GiB is available (memory_limit)", "16 row(s) x 8192 tokens",
                  "checkpointing on", "micro_batch_tokens = 8192"):
        assert words in message, message
    # the fix it names fits; "auto" does not check on CPU; "off" never checks
    check_memory(recipe('engine = { max_seq_len = 8192 }\n[trainer]\nbatch_size = 16\n'
                        '[trainer.compute]\nmemory_limit = "1GiB"\n'
                        'micro_batch_tokens = 8192\n'), RAW)
    check_memory(recipe('engine = { max_seq_len = 8192 }\n'), RAW)
    check_memory(recipe('[trainer.compute]\nmemory_limit = "off"\n'), RAW, limit=None)
    with pytest.raises(msgspec.ValidationError, match="memory_limit"):
        recipe('[trainer.compute]\nmemory_limit = "a lot"\n')


def test_load_recipe_refuses_a_worst_step_over_memory_limit_before_anything_runs(
        tmp_path) -> None:
    """With memory_limit a size and `model.path` set, `load_recipe` (so `streamrl run`) stops
    with the recipe's file name, before any hook, process or log exists."""
    import json

    from streamrl.recipe.config import ConfigError, load_recipe

    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text(json.dumps(RAW))
    path = tmp_path / "recipe.toml"
    path.write_text(f'[run]\nname = "long"\n[model]\npath = "{checkpoint}"\n[data]\n'
                    'prompts = "a:b"\n[rollout]\nreward = "a:b"\n'
                    'engine = {{ max_seq_len = 8192 }}\n[trainer]\nbatch_size = 16\n'
                    '[trainer.compute]\nmemory_limit = "1GiB"\n'.replace("{{", "{")
                    .replace("}}", "}"))
    with pytest.raises(ConfigError, match=r"recipe.toml: the trainer's worst step would need"):
        load_recipe(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "recipe.toml"]
