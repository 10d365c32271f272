"""Write everything the gsm8k recipe's CPU run starts from: the data files and the warm start.

    python -m recipes.gsm8k.prepare runs/gsm8k          # once per machine (cached), then:
    streamrl run recipes/gsm8k/recipe.toml

    runs/gsm8k/train.parquet   NUM_TRAIN word problems, veRL's columns (task.py)
    runs/gsm8k/eval.parquet    NUM_EVAL held-out ones
    runs/gsm8k/model/          an HF checkpoint directory, as a downloaded model is one:
                               config.json, model.safetensors, generation_config.json (eos),
                               tokenizer.json, tokenizer_config.json (chat template)

A second call with the same settings and recipe code returns at once (`prepared.json` records
what was built); a changed setting or source file rebuilds. The warm start takes ~3 CPU-minutes
(240 s on a 2-core machine at load average ~2; README.md has the measured figures).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import torch

from recipes.gsm8k import evaluate as evaluation
from recipes.gsm8k import task, tokenizer, warmstart
from streamrl.models import load_checkpoint

NUM_TRAIN = 4096
NUM_EVAL = 256
TRAIN_SEED, EVAL_SEED = 0, 1
"""The data files are the same on every machine; `--seed` seeds only the warm start."""
STEPS = 300
"""SFT steps of the warm start (batch 64)."""


def build_key(**settings: int) -> str:
    """What the prepared files depend on: the recipe's source and the settings."""
    h = hashlib.sha256(json.dumps([sorted(settings.items()), NUM_EVAL]).encode())
    for module in (task, tokenizer, warmstart, evaluation):
        h.update(Path(module.__file__).read_bytes())
    return h.hexdigest()[:16]


def prepare(out_dir: str | Path, *, seed: int = 0, steps: int = STEPS, hidden_size: int = 128,
            num_layers: int = 3, num_train: int = NUM_TRAIN, progress: bool = True) -> Path:
    """Build (or find, cached) the data files and the warm-start checkpoint under `out_dir`.
    `hidden_size`, `num_layers` and `num_train` size the model and the train file (tests make
    smaller ones)."""
    from transformers import AutoTokenizer  # heavy: only when something is built

    out = Path(out_dir)
    settings = dict(seed=seed, steps=steps, hidden_size=hidden_size, num_layers=num_layers)
    key = build_key(**settings, num_train=num_train)
    marker = out / "prepared.json"
    if marker.is_file() and json.loads(marker.read_text()).get("key") == key:
        return out
    marker.unlink(missing_ok=True)
    train = task.make_problems(seed=TRAIN_SEED, num_problems=num_train, split="train")
    held_out = eval_problems()
    task.write_parquet(train, out / "train.parquet", split="train")
    task.write_parquet(held_out, out / "eval.parquet", split="eval")
    model_dir = tokenizer.train_tokenizer(out / "model")
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    t0 = time.monotonic()
    warmstart.warm_start(model_dir, tokenizer=tok, problems=train, progress=progress, **settings)
    sft_s = time.monotonic() - t0
    generation = {"eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id,
                  "bos_token_id": None}
    (model_dir / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    marker.write_text(json.dumps({"key": key, **settings, "num_train": num_train,
                                  "warm_start_s": round(sft_s, 1)}, indent=2) + "\n")
    return out


def eval_problems() -> list[task.WordProblem]:
    """The held-out problems of eval.parquet (fixed: the same on every machine)."""
    return task.make_problems(seed=EVAL_SEED, num_problems=NUM_EVAL, split="eval")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0, help="seeds the warm start")
    parser.add_argument("--steps", type=int, default=STEPS, help="SFT steps (batch 64)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 is fastest on a shared 2-core machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.monotonic()
    out = prepare(args.out_dir, seed=args.seed, steps=args.steps)
    print(f"prepared {out} in {time.monotonic() - t0:.0f} s "
          f"({json.loads((out / 'prepared.json').read_text())})")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(out / "model"))
    model = load_checkpoint(out / "model")
    for temperature in (0.0, 1.0):
        report = evaluation.evaluate(model, tok, eval_problems(), temperature=temperature,
                                     num_samples=4)
        print(f"warm start, held-out accuracy at temperature {temperature}: "
              f"{report.accuracy:.3f} {report.statuses}")


if __name__ == "__main__":
    main()
