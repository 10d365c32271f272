"""Held-out evaluation of a model on the arithmetic task, with a minimal built-in sampler.

    report = evaluate(model, eval_problems(), temperature=0.0)    # greedy accuracy
    report = evaluate(model, eval_problems(), temperature=1.0, seed=0, num_samples=4)
    report.mean_reward, report.statuses                           # 0.31, {"correct": 79, ...}

The sampler here is deliberately tiny (batched KV-cache decode, nothing else) so the recipe can
judge its own warm start without the rollout engine; the streaming run scores with the engine
and `task.reward`, which give the same numbers for the same model.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import msgspec
import numpy as np
import torch
from torch import Tensor

from recipes.arithmetic.task import Problem, score
from recipes.arithmetic.tokenizer import TOKENIZER
from streamrl.models import CausalLM, KVCache

MAX_NEW_TOKENS = 6
"""Answer digits plus <stop>, with slack; a longer response is "truncated"."""


class EvalReport(msgspec.Struct, kw_only=True, frozen=True):
    mean_reward: float
    """Mean reward over every sample of every problem."""
    num_samples: int
    statuses: dict[str, int]
    """How many samples ended "correct", "wrong", "unparsable", "truncated"."""


@torch.no_grad()
def generate(
    model: CausalLM,
    prompts: Sequence[np.ndarray],
    *,
    temperature: float,
    max_new_tokens: int = MAX_NEW_TOKENS,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Sample a response for every prompt (temperature 0 = greedy).

    Returns (tokens [B, max_new_tokens] int64, lengths [B]): row b's response is
    tokens[b, :lengths[b]], the stop token included when it was sampled; a row that never
    sampled <stop> has length `max_new_tokens` and ends with "length".
    """
    B = len(prompts)
    prompt_lens = torch.tensor([len(p) for p in prompts])
    P = int(prompt_lens.max())
    tokens = torch.full((B, P), TOKENIZER.pad_token_id, dtype=torch.long)
    for b, p in enumerate(prompts):
        tokens[b, : len(p)] = torch.as_tensor(p, dtype=torch.long)
    cache = KVCache.for_model(model.config, num_slots=B, max_seq_len=P + max_new_tokens)
    # Right-padded prefill: pads sit past each row's end and are overwritten by its decode steps.
    hidden = model(tokens, torch.arange(P).expand(B, P), kv_cache=cache, return_hidden=True).hidden
    logits = model.logits(hidden[torch.arange(B), prompt_lens - 1])  # [B, V]
    out = torch.full((B, max_new_tokens), TOKENIZER.pad_token_id, dtype=torch.long)
    lengths = torch.full((B,), max_new_tokens, dtype=torch.long)
    done = torch.zeros(B, dtype=torch.bool)
    for i in range(max_new_tokens):
        if temperature == 0:
            nxt = logits.argmax(-1)
        else:
            probs = torch.softmax(logits.float() / temperature, dim=-1)
            nxt = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        out[:, i] = torch.where(done, TOKENIZER.pad_token_id, nxt)
        stopped = ~done & (nxt == TOKENIZER.stop_token_id)
        lengths[stopped] = i + 1
        done |= stopped
        if bool(done.all()) or i == max_new_tokens - 1:
            break
        positions = (prompt_lens + i)[:, None]  # [B, 1]
        logits = model(out[:, i : i + 1], positions, kv_cache=cache).logits[:, -1]
    return out, lengths


def response_text(tokens: Tensor, length: int) -> tuple[str, str]:
    """(text without the stop token, finish reason) of one generated row."""
    ids = tokens[:length].tolist()
    if ids and ids[-1] == TOKENIZER.stop_token_id:
        return TOKENIZER.decode(ids[:-1]), "stop"
    return TOKENIZER.decode(ids), "length"


def evaluate(
    model: CausalLM,
    problems: Sequence[Problem],
    *,
    temperature: float = 0.0,
    num_samples: int = 1,
    seed: int = 0,
    batch_size: int = 512,
) -> EvalReport:
    """Mean reward of `model` on `problems`, `num_samples` samples each (1 when greedy)."""
    if temperature == 0:
        num_samples = 1
    gen = torch.Generator().manual_seed(seed)
    prompts = [TOKENIZER.encode(p.text, bos=True) for p in problems for _ in range(num_samples)]
    answers = [p.metadata["answer"] for p in problems for _ in range(num_samples)]
    was_training = model.training
    model.eval()
    statuses: Counter[str] = Counter()
    total = 0.0
    for start in range(0, len(prompts), batch_size):
        toks, lens = generate(
            model, prompts[start : start + batch_size], temperature=temperature, generator=gen
        )
        for row, length, answer in zip(
            toks, lens.tolist(), answers[start : start + batch_size], strict=True
        ):
            text, finish_reason = response_text(row, length)
            result = score(text, answer, finish_reason)
            statuses[result.status] += 1
            total += result.reward
    model.train(was_training)
    return EvalReport(
        mean_reward=total / max(len(prompts), 1), num_samples=len(prompts), statuses=dict(statuses)
    )
