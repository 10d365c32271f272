"""Rewards by name: how `[rollout] reward` and `reward_by_source` become a run's one `RewardFn`.

    reward = "math"                                            # a built-in, by name
    reward = "recipes.arithmetic.task:reward"                  # any RewardFn, by import path
    reward = { name = "regex", options = { pattern = '#### (\\S+)' } }
    reward = [{ name = "math" }, { name = "format", weight = 0.1 }]        # a weighted sum
    reward_by_source = { "openai/gsm8k" = "gsm8k" }     # per row, by metadata["data_source"]

The built-ins live in the producers component (streamrl/producers/rewards/, docs/rewards.md);
`REWARDS` names them by import path, so this library module imports none of them, and
`build_reward` (called by `resolve_hooks`, once per process) is the one place a name becomes a
callable. A reward that is a class is instantiated with the term's `options` (msgspec-validated
when it is a Struct), so a misspelled option fails at load like any other recipe field.
"""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Mapping
from typing import Any

import msgspec

from streamrl.hooks.resolve import ResolveError, resolve
from streamrl.hooks.rollout import RewardFn

REWARDS: dict[str, str] = {
    "math": "streamrl.producers.rewards.math:MathReward",
    "gsm8k": "streamrl.producers.rewards.gsm8k:Gsm8kReward",
    "exact": "streamrl.producers.rewards.exact:ExactReward",
    "regex": "streamrl.producers.rewards.regex:RegexReward",
    "format": "streamrl.producers.rewards.format:FormatReward",
}
"""Built-in reward name -> import path of its class (docs/rewards.md describes each)."""

WEIGHTED = "streamrl.producers.rewards.combine:Weighted"
BY_SOURCE = "streamrl.producers.rewards.combine:BySource"


class RewardTerm(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """One reward of a recipe: a built-in name or an import path, with its weight and options."""

    name: str
    """A built-in name (math, gsm8k, exact, regex, format) or 'package.module:attribute'."""
    weight: float = 1.0
    """Its factor in the weighted sum (0 records it in the details without counting it)."""
    label: str | None = None
    """Its key in `reward_details` (default: the name, or the attribute of an import path)."""
    options: dict[str, Any] = {}
    """Keyword arguments of the reward's class, e.g. `{ pattern = '...' }` for regex."""

    def __post_init__(self) -> None:
        if not math.isfinite(self.weight):
            raise ValueError(f"reward {self.name!r}: weight must be a finite number")


RewardSpec = str | RewardTerm | tuple[RewardTerm, ...]
"""What `rollout.reward` and each `rollout.reward_by_source` value may be."""


class RewardRecipe(msgspec.Struct, kw_only=True, frozen=True):
    """A run's reward as its recipe names it: plain data that `build()` turns into the run's
    `RewardFn`, so another process (a reward worker, producers/rewards/sandbox.py) rebuilds the
    same function from it, whatever its names point at: a lambda or a closure that pickle
    cannot send is importable by its path."""

    reward: RewardSpec
    """`rollout.reward`."""
    by_source: dict[str, RewardSpec] = {}
    """`rollout.reward_by_source`."""
    what: str = "rollout.reward"
    """The field an error names."""

    def build(self) -> RewardFn:
        return build_reward(self.reward, self.by_source, what=self.what)


def build_reward(reward: RewardSpec, by_source: Mapping[str, RewardSpec], *,
                 what: str = "rollout.reward") -> RewardFn:
    """The run's `RewardFn`; a `ResolveError` (a ValueError) naming the field (`what`) for an
    unknown name, a bad import path or bad options."""
    default = _build(reward, what)
    if not by_source:
        return default
    table = {source: _build(spec, f"rollout.reward_by_source[{source!r}]")
             for source, spec in by_source.items()}
    return resolve(BY_SOURCE, what="rollout.reward_by_source")(table=table, default=default)


def _build(spec: RewardSpec, where: str) -> RewardFn:
    if isinstance(spec, str):
        return _one(RewardTerm(name=spec), where)
    terms = (spec,) if isinstance(spec, RewardTerm) else spec
    if not terms:
        raise ResolveError(f"{where} is an empty list: name at least one reward")
    if len(terms) == 1 and terms[0].weight == 1.0 and terms[0].label is None:
        return _one(terms[0], where)
    labels = [t.label or t.name.rpartition(":")[2].rpartition(".")[2] for t in terms]
    for i, label in enumerate(labels):
        if label in labels[:i]:
            raise ResolveError(f"{where}: two terms are labelled {label!r} in "
                               "reward_details; give one of them a `label`")
    fns = [_one(t, f"{where}[{i}]") for i, t in enumerate(terms)]
    weighted = resolve(WEIGHTED, what=where)
    return weighted(terms=tuple(zip(labels, (t.weight for t in terms), fns, strict=True)))


def _one(term: RewardTerm, where: str) -> RewardFn:
    path = REWARDS.get(term.name, term.name)
    if ":" not in path and "." not in path:  # a dotted one is a path: `resolve` explains it
        close = difflib.get_close_matches(term.name, REWARDS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ResolveError(f"{where}: unknown reward {term.name!r}, neither a built-in name nor "
                           f"an import path ('package.module:function'); {hint}known: "
                           f"{', '.join(sorted(REWARDS))}")
    target = resolve(path, what=where)
    if inspect.isclass(target):
        try:
            fn = (msgspec.convert(term.options, target) if issubclass(target, msgspec.Struct)
                  else target(**term.options))
        except (msgspec.ValidationError, TypeError, ValueError) as error:
            raise ResolveError(f"{where}: options of reward {term.name!r}: {error}") from None
    elif term.options:
        raise ResolveError(f"{where}: reward {term.name!r} is a function and takes no options; "
                           "remove `options` or name a class")
    else:
        fn = target
    try:
        inspect.signature(fn).bind(None)
    except TypeError:
        raise ResolveError(f"{where}: reward {term.name!r} cannot be called with one "
                           f"RewardInput: signature is {inspect.signature(fn)}") from None
    except ValueError:
        pass  # no introspectable signature: trust it
    return fn
