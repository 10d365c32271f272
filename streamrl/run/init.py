"""The initial checkpoint of a run: the recipe's `model.path` as it is, or its `model.init` hook,
run once per (hook source, model section, seed) and cached under the runs directory, so a warm
start that took minutes is not repeated by the next run of the same recipe, nor by a fork that
checks its model's shape."""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path

import msgspec

from streamrl.hooks.run import ModelInit, ModelInitRequest
from streamrl.recipe.config import RunConfig


def prepare_init(config: RunConfig, init: ModelInit | None, cache_dir: Path) -> Path:
    """The initial checkpoint: `model.path` (read in place, never copied), or the one `init`
    builds, once per (init hook source, model section, seed) and cached: a warm start that took
    minutes is not repeated by the next run of the same recipe."""
    if config.model.path is not None:
        return Path(config.model.path)
    if init is None:
        raise ValueError("model.init is set but its hook was not resolved")
    source = inspect.getsourcefile(init) or ""
    key = hashlib.sha256(
        Path(source).read_bytes() + msgspec.json.encode([config.model, config.run.seed,
                                                         config.model.init])).hexdigest()[:16]
    out_dir = cache_dir / f"init-{key}"
    if not (out_dir / "config.json").exists():
        built = init(ModelInitRequest(out_dir=out_dir, seed=config.run.seed, moe=config.model.moe))
        if Path(built) != out_dir:
            raise ValueError(f"model.init wrote {built}, expected {out_dir}")
    return out_dir
