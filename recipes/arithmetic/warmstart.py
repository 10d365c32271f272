"""SFT warm start from scratch: a tiny Qwen3 that knows the format but forgets carries.

    python -m recipes.arithmetic.warmstart runs/arith-warm            # dense, 20-70 s on 2 cores
    python -m recipes.arithmetic.warmstart runs/arith-warm-moe --moe  # Qwen3-MoE, 4 experts top-2

    warm_start("runs/arith-warm", seed=0)                             # the same, from Python

RL can only sharpen what the policy already samples now and then, and the recipe must leave it
something to sharpen. So the warm start imitates a *sloppy student*: its supervised targets are
sums in which each carry is forgotten with probability `forget_carry`. The model learns the
format and the digit sums, samples the right answer to carry problems only some of the time,
and answers greedily the sloppy way; RL with the exact-sum reward then has to make it carry.

Deterministic: the same seed and settings give the same checkpoint bytes (on one machine and
thread count; float reductions are not bit-stable across BLAS builds).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from recipes.arithmetic.evaluate import evaluate
from recipes.arithmetic.task import NUM_DIGITS, eval_problems, problem, sample_pairs
from recipes.arithmetic.tokenizer import TOKENIZER
from streamrl.models import CausalLM, ModelConfig, load_checkpoint, save_checkpoint

_PAD = TOKENIZER.pad_token_id


def model_config(*, moe: bool = False, hidden_size: int = 64, num_layers: int = 2) -> ModelConfig:
    """The recipe's tiny Qwen3 (dense) or Qwen3-MoE (4 experts, top-2) architecture."""
    common = dict(
        vocab_size=TOKENIZER.vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden_size // 4,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    if not moe:
        return ModelConfig(model_type="qwen3", **common)
    return ModelConfig(
        model_type="qwen3_moe",
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=hidden_size,
        norm_topk_prob=True,
        **common,
    )


def sloppy_sum(
    a: int, b: int, rng: np.random.Generator, forget_carry: float, num_digits: int = NUM_DIGITS
) -> str:
    """a + b written, zero-padded to `num_digits` + 1 digits, by a student who drops each
    carry with probability `forget_carry`."""
    digits, carry = [], 0
    for _ in range(num_digits + 1):
        s = a % 10 + b % 10 + carry
        digits.append(s % 10)
        carry = s // 10 if s >= 10 and rng.random() >= forget_carry else 0
        a, b = a // 10, b // 10
    return "".join(map(str, reversed(digits)))


def sft_batch(
    rng: np.random.Generator, batch_size: int, *, forget_carry: float, num_digits: int = NUM_DIGITS
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One supervised batch: (tokens [B, T], positions [B, T], loss mask [B, T] on targets)."""
    rows, starts = [], []
    for a, b in sample_pairs(rng, batch_size, eval_split=False, num_digits=num_digits):
        prompt = TOKENIZER.encode(problem(a, b, num_digits).text, bos=True)
        answer = TOKENIZER.encode(sloppy_sum(a, b, rng, forget_carry, num_digits), stop=True)
        rows.append(np.concatenate([prompt, answer]))
        starts.append(len(prompt))
    T = max(len(r) for r in rows)
    tokens = torch.full((len(rows), T), _PAD, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.bool)
    for i, (row, start) in enumerate(zip(rows, starts, strict=True)):
        tokens[i, : len(row)] = torch.from_numpy(row.astype(np.int64))
        mask[i, start : len(row)] = True  # predict the answer and <stop>, not the prompt
    return tokens, torch.arange(T).expand(len(rows), T), mask


def init_weights(model: CausalLM, seed: int, std: float = 0.05) -> None:
    """Normal init from a private generator (so the result ignores the global RNG); residual
    output projections scaled down by sqrt(2 * layers), GPT-2 style. std 0.05 rather than the
    usual 0.02: at this width, larger attention logits at init shorten the plateau before the
    model finds which operand digits to attend to (~250 instead of ~350 steps, measured)."""
    gen = torch.Generator().manual_seed(seed)
    out_std = std / (2 * model.config.num_hidden_layers) ** 0.5
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                continue  # RMSNorm gains (and q/k norms) stay at 1
            is_out = name.endswith(("o_proj.weight", "down_proj.weight", "experts.down_proj"))
            p.copy_(torch.randn(p.shape, generator=gen) * (out_std if is_out else std))


def sft_loss(
    model: CausalLM, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Mean next-token cross-entropy over the masked (answer) tokens."""
    logits = model(tokens[:, :-1], positions[:, :-1]).logits  # [B, T-1, V]
    nll = torch.nn.functional.cross_entropy(
        logits.float().transpose(1, 2), tokens[:, 1:], reduction="none"
    )
    target_mask = mask[:, 1:].float()
    return (nll * target_mask).sum() / target_mask.sum()


def warm_start(
    out_dir: str | Path,
    *,
    seed: int = 0,
    steps: int = 800,
    batch_size: int = 64,
    lr: float = 3e-3,
    forget_carry: float = 0.8,
    moe: bool = False,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_digits: int = NUM_DIGITS,
    progress: bool = True,
) -> Path:
    """Train the tiny model on sloppy sums and save it (HF format) to `out_dir`; returns it.

    The defaults are the measured recipe (README.md): held-out greedy accuracy ~0.25, mean
    reward ~0.33 when sampling at temperature 1. Much below 800 steps the model is still on
    its plateau (format learned, digit sums not); `hidden_size`/`num_layers` are the size dials.
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be positive, got {steps}, {batch_size}")
    if not 0.0 <= forget_carry <= 1.0:
        raise ValueError(f"forget_carry is a probability in [0, 1], got {forget_carry}")
    model = CausalLM(model_config(moe=moe, hidden_size=hidden_size, num_layers=num_layers))
    init_weights(model, seed)
    model.train()
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.0)
    warmup = max(steps // 10, 1)
    # Linear warmup, then cosine decay to 10%: short runs still end at a low, stable lr.
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min((s + 1) / warmup, 0.1 + 0.45 * (1 + np.cos(np.pi * s / steps))),
    )
    columns = (
        TextColumn("warm start"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("loss {task.fields[loss]:.3f}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("sft", total=steps, loss=float("nan"))
        for _ in range(steps):
            batch = sft_batch(rng, batch_size, forget_carry=forget_carry, num_digits=num_digits)
            loss = sft_loss(model, *batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            bar.update(task, advance=1, loss=loss.item())
    out = Path(out_dir)
    save_checkpoint(model.eval(), out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--moe", action="store_true", help="Qwen3-MoE, 4 experts top-2")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument(
        "--threads", type=int, default=2, help="torch threads; use 1 if other jobs share the CPU"
    )
    args = parser.parse_args()
    # The recipe's machine has 2 cores. When other processes compete for them, OpenMP's
    # spin-waits made 2 threads 8-20x slower than 1 (README.md), hence the flag.
    torch.set_num_threads(args.threads)
    path = warm_start(args.out_dir, seed=args.seed, steps=args.steps, moe=args.moe)
    model = load_checkpoint(path)
    for temperature in (0.0, 1.0):
        report = evaluate(model, eval_problems(), temperature=temperature, num_samples=4)
        print(
            f"held-out mean reward at temperature {temperature}: {report.mean_reward:.3f} "
            f"{report.statuses}"
        )
    print(f"saved {path}")


if __name__ == "__main__":
    main()
