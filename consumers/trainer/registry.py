"""Hooks by import path: `resolve("package.module:attribute", expected)`.

Configs name advantage estimators and losses as strings, so a user's own function plugs in with no
registration step and no string dispatch in the core:

    advantage = resolve_advantage("consumers.trainer.advantages:grpo")
    loss_fn = resolve_loss("my_project.losses:my_loss")

`AlgorithmConfig` resolves its paths when it is loaded, so a typo fails at startup rather than at
the first training step.
"""

from __future__ import annotations

import collections.abc
import importlib
import inspect
import typing
from typing import Any, cast

import msgspec

from consumers.trainer.advantages import AdvantageFn
from consumers.trainer.batch import BatchConfig
from consumers.trainer.losses import LossConfig, LossFn

DEFAULT_ADVANTAGE = "consumers.trainer.advantages:grpo"
DEFAULT_LOSS = "consumers.trainer.losses:decoupled_ppo"


class ResolveError(ValueError):
    """A hook path that does not name a usable object; the message says which part is wrong."""


def resolve(path: str, expected: Any = None) -> Any:
    """Import `module:attribute` (the attribute may be dotted, `module:Class.method`) and check
    it against `expected`: a class (isinstance), a `Callable[[...], ...]` hint (callable, taking
    that many positional arguments), or None / any other hint (no check)."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ResolveError(f"hook path {path!r} must look like 'package.module:attribute'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is not None and (module_name + ".").startswith(e.name + "."):
            raise ResolveError(f"cannot import {path!r}: no module named {e.name}") from None
        raise ResolveError(f"cannot import {path!r}: importing {module_name} failed: {e}") from e
    except Exception as e:
        raise ResolveError(f"cannot import {path!r}: importing {module_name} failed: "
                           f"{type(e).__name__}: {e}") from e
    obj: Any = module
    where = module_name
    for part in attr.split("."):
        if not hasattr(obj, part):
            kind = "module" if obj is module else "object"
            raise ResolveError(f"cannot import {path!r}: {kind} {where} has no attribute {part}")
        obj = getattr(obj, part)
        where = f"{where}.{part}"
    _check(path, obj, expected)
    return obj


def resolve_advantage(path: str) -> AdvantageFn:
    return cast(AdvantageFn, resolve(path, AdvantageFn))


def resolve_loss(path: str) -> LossFn:
    return cast(LossFn, resolve(path, LossFn))


class AlgorithmConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    advantage: str = DEFAULT_ADVANTAGE
    """Import path of an `AdvantageFn(AdvantageInput) -> Tensor [B, S]` (advantages.py)."""
    loss: str = DEFAULT_LOSS
    """Import path of a `LossFn(LossInput) -> LossOutput` (losses.py)."""
    loss_config: LossConfig = msgspec.field(default_factory=LossConfig)
    """Knobs every built-in loss reads: clip range, importance cap, aggregation."""
    batch: BatchConfig = msgspec.field(default_factory=BatchConfig)
    """Batch assembly: packing and padding."""

    def __post_init__(self) -> None:
        resolve_advantage(self.advantage)
        resolve_loss(self.loss)


def _check(path: str, obj: Any, expected: Any) -> None:
    if expected is None:
        return
    if isinstance(expected, type):
        if not isinstance(obj, expected):
            raise ResolveError(f"{path!r} is a {type(obj).__name__}, expected "
                               f"{expected.__name__}")
        return
    if typing.get_origin(expected) is not collections.abc.Callable:
        return
    if not callable(obj):
        raise ResolveError(f"{path!r} is a {type(obj).__name__}, expected a callable")
    params = typing.get_args(expected)[0] if typing.get_args(expected) else ...
    if params is ...:
        return
    try:
        inspect.signature(obj).bind(*([None] * len(params)))
    except TypeError:
        raise ResolveError(f"{path!r} cannot be called with {len(params)} positional "
                           f"argument(s) as its hook expects: signature is "
                           f"{inspect.signature(obj)}") from None
    except ValueError:
        return  # builtins without an introspectable signature: trust them
