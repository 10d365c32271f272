"""The gsm8k recipe's one hook: `[eval] evaluate = "recipes.gsm8k.hooks:evaluate"`.

Everything else in recipe.toml is data (`[model] path`, `[data] train`) and built-ins
(`reward = "math"`). The evaluator reports held-out accuracy on prepare.py's eval problems:
greedy (the headline) and at temperature 1 (4 samples each). The run's checkpoints hold weights
only, so the tokenizer is the recipe's own, rebuilt deterministically (tokenizer.py, <1 s).
"""

from __future__ import annotations

import functools
import tempfile
from typing import Any

import torch

from recipes.gsm8k.evaluate import evaluate as evaluate_model
from recipes.gsm8k.prepare import eval_problems
from recipes.gsm8k.tokenizer import train_tokenizer
from streamrl.hooks.run import EvalRequest
from streamrl.models import load_checkpoint


@functools.cache
def recipe_tokenizer() -> Any:
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        return AutoTokenizer.from_pretrained(str(train_tokenizer(tmp)))


def evaluate(request: EvalRequest) -> dict[str, float]:
    """Greedy held-out accuracy first (the headline), then accuracy at T=1 over 4 samples."""
    torch.set_num_threads(1)  # the driver shares 2 cores with the run's processes
    model = load_checkpoint(request.checkpoint_dir)
    tok = recipe_tokenizer()
    if model.config.vocab_size != len(tok):
        raise ValueError(f"{request.checkpoint_dir}: vocab_size {model.config.vocab_size} is "
                         f"not the recipe tokenizer's {len(tok)}: was it made by "
                         "recipes.gsm8k.prepare?")
    problems = eval_problems()
    greedy = evaluate_model(model, tok, problems, temperature=0.0)
    sampled = evaluate_model(model, tok, problems, temperature=1.0, num_samples=4,
                             seed=request.version)
    return {"eval greedy accuracy": greedy.accuracy, "eval accuracy T=1": sampled.accuracy}
