"""SFT warm start from scratch: a tiny Qwen3 that answers word problems in `\\boxed{}` and
misreads most subtraction questions as additions.

    warm_start("runs/gsm8k/model", tokenizer_dir="runs/gsm8k/model", seed=0)

RL can only sharpen what the policy already samples now and then. So the warm start imitates a
*sloppy student*: its supervised targets are worked answers ("8 - 3 = 5. \\boxed{5}") in which a
subtraction question is answered as an addition ("8 + 3 = 11. \\boxed{11}") with a probability
that depends on the phrasing (`MISREAD`). The model learns the chat format, copying the numbers
and the arithmetic; on subtraction questions it picks the right operation only some of the time
when sampling and the wrong one when greedy. The `math` reward then has to teach it which
phrasings mean "take away".

Deterministic: the same seed and settings give the same checkpoint bytes (on one machine and
thread count; float reductions are not bit-stable across BLAS builds).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from recipes.gsm8k.evaluate import prompt_ids
from recipes.gsm8k.task import TEMPLATES, WordProblem, make_problems
from streamrl.models import CausalLM, ModelConfig, save_checkpoint

MISREAD = {3: 0.6, 4: 0.7, 5: 0.8}
"""Template index (task.TEMPLATES) -> probability the student answers it as an addition."""
assert all(TEMPLATES[t][0] == "sub" for t in MISREAD)


def model_config(vocab_size: int, *, hidden_size: int = 128, num_layers: int = 3) -> ModelConfig:
    """The recipe's tiny Qwen3 (dense): ~0.5M parameters at the defaults."""
    return ModelConfig(
        model_type="qwen3",
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden_size // 4,
        max_position_embeddings=128,
        tie_word_embeddings=True,
    )


class SFTData:
    """Every training problem tokenized once: prompt, right answer and misread answer (each
    answer ends with the eos, as the chat template closes an assistant turn)."""

    def __init__(self, tokenizer: Any, problems: list[WordProblem]) -> None:
        eos = tokenizer.eos_token_id
        enc = lambda s: [*tokenizer.encode(s, add_special_tokens=False), eos]  # noqa: E731
        self.problems = problems
        self.prompts = [prompt_ids(tokenizer, p) for p in problems]
        self.right = [enc(p.solution()) for p in problems]
        self.misread = [enc(p.solution(operation="add")) for p in problems]
        self.pad = tokenizer.pad_token_id

    def batch(self, rng: np.random.Generator, batch_size: int
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(tokens [B, T], positions [B, T], loss mask [B, T] on the answer tokens)."""
        rows, starts = [], []
        for i in rng.integers(len(self.problems), size=batch_size).tolist():
            misread = rng.random() < MISREAD.get(self.problems[i].template, 0.0)
            answer = self.misread[i] if misread else self.right[i]
            rows.append(self.prompts[i] + answer)
            starts.append(len(self.prompts[i]))
        T = max(len(r) for r in rows)
        tokens = torch.full((len(rows), T), self.pad, dtype=torch.long)
        mask = torch.zeros(len(rows), T, dtype=torch.bool)
        for b, (row, start) in enumerate(zip(rows, starts, strict=True)):
            tokens[b, : len(row)] = torch.tensor(row)
            mask[b, start : len(row)] = True
        return tokens, torch.arange(T).expand(len(rows), T), mask


def init_weights(model: CausalLM, seed: int, std: float = 0.05) -> None:
    """Normal init from a private generator (the result ignores the global RNG); residual output
    projections scaled by 1/sqrt(2 * layers); RMSNorm gains stay 1."""
    gen = torch.Generator().manual_seed(seed)
    out_std = std / (2 * model.config.num_hidden_layers) ** 0.5
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                continue
            is_out = name.endswith(("o_proj.weight", "down_proj.weight"))
            p.copy_(torch.randn(p.shape, generator=gen) * (out_std if is_out else std))


def sft_loss(model: CausalLM, tokens: torch.Tensor, positions: torch.Tensor,
             mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the answer tokens."""
    logits = model(tokens[:, :-1], positions[:, :-1]).logits  # [B, T-1, V]
    nll = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1), reduction="none")
    target = mask[:, 1:].reshape(-1).float()
    return (nll * target).sum() / target.sum()


def warm_start(out_dir: str | Path, *, tokenizer: Any, seed: int = 0, steps: int = 300,
               batch_size: int = 64, lr: float = 3e-3, hidden_size: int = 128,
               num_layers: int = 3, problems: list[WordProblem] | None = None,
               progress: bool = True) -> Path:
    """Train the tiny model on the sloppy student's answers and save it (HF format: config.json,
    model.safetensors) to `out_dir`; returns it. `problems` defaults to 4096 training problems
    of seed `seed`. The tokenizer files are the caller's to add."""
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be positive, got {steps}, {batch_size}")
    if problems is None:
        problems = make_problems(seed=seed, num_problems=4096, split="train")
    data = SFTData(tokenizer, problems)
    model = CausalLM(model_config(len(tokenizer), hidden_size=hidden_size, num_layers=num_layers))
    init_weights(model, seed)
    model.train()
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.0)
    warmup = max(steps // 10, 1)
    # Linear warmup, then cosine decay to 10%: short runs still end at a low, stable lr.
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, 0.1 + 0.45 * (1 + np.cos(np.pi * s / steps))))
    columns = (TextColumn("warm start"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("loss {task.fields[loss]:.3f}"), TimeRemainingColumn())
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("sft", total=steps, loss=float("nan"))
        for _ in range(steps):
            loss = sft_loss(model, *data.batch(rng, batch_size))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            bar.update(task, advance=1, loss=loss.item())
    out = Path(out_dir)
    save_checkpoint(model.eval(), out)
    return out
