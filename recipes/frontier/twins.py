"""`[model] init` hooks of the frontier recipes' tiny twins (`recipes/frontier/*/tiny.toml`).

Each writes the twin of the config.json beside its recipe: the same architecture at tiny sizes
(`streamrl.plan.twin.twin_config`), the arithmetic recipe's character vocabulary, random init
seeded by `run.seed`, saved by streamrl's own `save_checkpoint` (about 1 MB). `streamrl run`
caches it under runs/cache keyed by this file's source, the `[model]` section and the seed
(streamrl/run/init.py): after editing streamrl/plan/twin.py or a config.json here, delete the
cached `init-*` directories.

    python -m recipes.frontier.twins kimi_k2 runs/kimi-k2-twin     # the same, by hand
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from recipes.arithmetic.tokenizer import TOKENIZER
from streamrl.hooks.run import ModelInitRequest
from streamrl.models import CausalLM, ModelConfig, save_checkpoint
from streamrl.plan.twin import twin_config

FRONTIER = Path(__file__).resolve().parent
NAMES = ("deepseek_v3", "glm45_air", "kimi_k2", "qwen3_235b_a22b", "qwen3_30b_a3b")


def twin(name: str) -> dict:
    """The twin config.json (a dict) of `recipes/frontier/<name>/config.json`."""
    raw = json.loads((FRONTIER / name / "config.json").read_text())
    return twin_config(raw, vocab_size=TOKENIZER.vocab_size)


def write_twin(name: str, out_dir: Path, *, seed: int) -> Path:
    """The twin checkpoint of `name` in `out_dir`; the same seed writes the same bytes."""
    config = ModelConfig.from_hf_dict(twin(name))
    with torch.random.fork_rng(devices=[]):  # the caller's random state is left as it was
        torch.manual_seed(seed)
        model = CausalLM(config)
    save_checkpoint(model, out_dir)
    return out_dir


def deepseek_v3(request: ModelInitRequest) -> Path:
    return write_twin("deepseek_v3", request.out_dir, seed=request.seed)


def glm45_air(request: ModelInitRequest) -> Path:
    return write_twin("glm45_air", request.out_dir, seed=request.seed)


def kimi_k2(request: ModelInitRequest) -> Path:
    return write_twin("kimi_k2", request.out_dir, seed=request.seed)


def qwen3_235b_a22b(request: ModelInitRequest) -> Path:
    return write_twin("qwen3_235b_a22b", request.out_dir, seed=request.seed)


def qwen3_30b_a3b(request: ModelInitRequest) -> Path:
    return write_twin("qwen3_30b_a3b", request.out_dir, seed=request.seed)


def main() -> None:
    parser = argparse.ArgumentParser(description="write a frontier model's tiny twin checkpoint")
    parser.add_argument("name", choices=NAMES)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(write_twin(args.name, args.out_dir, seed=args.seed))


if __name__ == "__main__":
    main()
