"""Held-out accuracy of a checkpoint on the word problems, with a minimal built-in sampler.

    tok = AutoTokenizer.from_pretrained(ckpt); model = load_checkpoint(ckpt)
    report = evaluate(model, tok, problems, temperature=0.0)          # greedy accuracy
    report.accuracy, report.statuses                                  # 0.55, {"correct": 141, ...}

The recipe judges its own warm start with this, without the rollout engine: prompts rendered by
the tokenizer's chat template, decoding until the eos (<|im_end|>), the answer read from the
last `\\boxed{}`. The streaming run scores with the `math` reward, which agrees on these answers
(integers in `\\boxed{}`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import msgspec
import torch
from torch import Tensor

from recipes.gsm8k.task import WordProblem
from streamrl.models import CausalLM, KVCache

MAX_NEW_TOKENS = 24
"""A worked answer is ~11-16 tokens plus <|im_end|>; a longer one is "truncated"."""
_BOXED = re.compile(r"\\boxed\{\s*(-?[0-9]{1,9})\s*\}")  # bounded: no int() of huge strings


class EvalReport(msgspec.Struct, kw_only=True, frozen=True):
    accuracy: float
    """Share of samples whose last \\boxed{} holds the right integer."""
    num_samples: int
    statuses: dict[str, int]
    """How many samples ended "correct", "wrong", "unparsable", "truncated"."""


def score(text: str, ground_truth: str, finish_reason: str = "stop") -> str:
    """The status of one answer: "correct", "wrong", "unparsable" (no \\boxed{integer}) or
    "truncated" (no eos). Model output is untrusted: never raises."""
    if finish_reason != "stop":
        return "truncated"
    found = _BOXED.findall(text) if isinstance(text, str) else []
    if not found:
        return "unparsable"
    return "correct" if int(found[-1]) == int(ground_truth) else "wrong"


def prompt_ids(tokenizer: Any, problem: WordProblem) -> list[int]:
    """The prompt's token ids, rendered by the tokenizer's chat template with the assistant's
    header (what a run records as the prompt)."""
    text = tokenizer.apply_chat_template(problem.messages(), add_generation_prompt=True,
                                         tokenize=False)
    return tokenizer.encode(text, add_special_tokens=False)


@torch.no_grad()
def generate(model: CausalLM, prompts: Sequence[Sequence[int]], *, eos: int, pad: int,
             temperature: float, max_new_tokens: int = MAX_NEW_TOKENS,
             generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Sample a response for every prompt (temperature 0 = greedy). Returns (tokens
    [B, max_new_tokens], lengths [B]); row b's response is tokens[b, :lengths[b]], eos included
    when sampled; a row without eos has length `max_new_tokens`."""
    B = len(prompts)
    prompt_lens = torch.tensor([len(p) for p in prompts])
    P = int(prompt_lens.max())
    tokens = torch.full((B, P), pad, dtype=torch.long)
    for b, p in enumerate(prompts):
        tokens[b, : len(p)] = torch.as_tensor(p, dtype=torch.long)
    cache = KVCache.for_model(model.config, num_slots=B, max_seq_len=P + max_new_tokens)
    # Right-padded prefill: pads sit past each row's end and are overwritten by its decode steps.
    hidden = model(tokens, torch.arange(P).expand(B, P), kv_cache=cache, return_hidden=True).hidden
    logits = model.logits(hidden[torch.arange(B), prompt_lens - 1])  # [B, V]
    out = torch.full((B, max_new_tokens), pad, dtype=torch.long)
    lengths = torch.full((B,), max_new_tokens, dtype=torch.long)
    done = torch.zeros(B, dtype=torch.bool)
    for i in range(max_new_tokens):
        if temperature == 0:
            nxt = logits.argmax(-1)
        else:
            probs = torch.softmax(logits.float() / temperature, dim=-1)
            nxt = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        out[:, i] = torch.where(done, pad, nxt)
        stopped = ~done & (nxt == eos)
        lengths[stopped] = i + 1
        done |= stopped
        if bool(done.all()) or i == max_new_tokens - 1:
            break
        logits = model(out[:, i : i + 1], (prompt_lens + i)[:, None], kv_cache=cache).logits[:, -1]
    return out, lengths


def evaluate(model: CausalLM, tokenizer: Any, problems: Sequence[WordProblem], *,
             temperature: float = 0.0, num_samples: int = 1, seed: int = 0,
             batch_size: int = 256) -> EvalReport:
    """Accuracy of `model` on `problems`, `num_samples` samples each (1 when greedy)."""
    if temperature == 0:
        num_samples = 1
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    gen = torch.Generator().manual_seed(seed)
    rendered = [prompt_ids(tokenizer, p) for p in problems]
    prompts = [ids for ids in rendered for _ in range(num_samples)]
    truths = [str(p.answer) for p in problems for _ in range(num_samples)]
    was_training = model.training
    model.eval()
    statuses: Counter[str] = Counter()
    for start in range(0, len(prompts), batch_size):
        toks, lens = generate(model, prompts[start : start + batch_size], eos=eos, pad=pad,
                              temperature=temperature, generator=gen)
        for row, n, truth in zip(toks, lens.tolist(), truths[start : start + batch_size],
                                 strict=True):
            ids = row[:n].tolist()
            finish = "stop" if ids and ids[-1] == eos else "length"
            text = tokenizer.decode(ids[:-1] if finish == "stop" else ids)
            statuses[score(text, truth, finish)] += 1
    model.train(was_training)
    n = max(len(prompts), 1)
    return EvalReport(accuracy=statuses["correct"] / n, num_samples=len(prompts),
                      statuses=dict(statuses))

