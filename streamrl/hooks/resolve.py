"""Extension points are plain callables named by import path: `"package.module:attribute"`.

    reward_fn = resolve("recipes.arithmetic.task:reward", RewardFn)

Each hook's type is declared in this package (run.py: tokenizer, prompts, model init, evaluator;
rollout.py: rewards and filters; train.py: advantages, losses, step hooks; engine.py: engines),
staleness policies in streamrl/staleness; `streamrl.recipe.hooks` resolves a recipe's all at once.
Configs resolve their paths when they are loaded, so a typo fails with a message that says what
to fix, never in the middle of a run. No registration step, no string dispatch in the core.
"""

from __future__ import annotations

import collections.abc
import importlib
import inspect
import typing
from typing import Any


class ResolveError(ValueError):
    """An import path that does not name a usable hook; the message says which part is wrong."""


def resolve(path: str, expected: Any = None, *, what: str = "hook") -> Any:
    """Import `module:attribute` (the attribute may be dotted: `module:Class.method`) and check it
    against `expected`: a class (the target must be that class, a subclass, or an instance), a
    `Callable[[...], ...]` hint (callable, taking that many positional arguments), or None."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ResolveError(f"{what} {path!r} is not an import path: write "
                           "'package.module:attribute'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is not None and (module_name + ".").startswith(e.name + "."):
            raise ResolveError(f"{what} {path!r}: cannot import module {module_name!r} "
                               f"(no module named {e.name})") from None
        raise ResolveError(f"{what} {path!r}: importing {module_name} failed: {e}") from e
    except Exception as e:
        raise ResolveError(f"{what} {path!r}: importing {module_name} failed: "
                           f"{type(e).__name__}: {e}") from e
    target: Any = module
    where = module_name
    for part in attr.split("."):
        if not hasattr(target, part):
            kind = "module" if target is module else "object"
            raise ResolveError(f"{what} {path!r}: {kind} {where!r} has no attribute {part!r}")
        target = getattr(target, part)
        where = f"{where}.{part}"
    _check(path, target, expected, what)
    return target


def _check(path: str, target: Any, expected: Any, what: str) -> None:
    if expected is None:
        return
    if isinstance(expected, type):
        ok = (issubclass(target, expected) if inspect.isclass(target)
              else isinstance(target, expected))
        if not ok:
            found = target.__name__ if inspect.isclass(target) else f"a {type(target).__name__}"
            raise ResolveError(f"{what} {path!r} is {found}, expected {expected.__name__}")
        return
    if typing.get_origin(expected) is not collections.abc.Callable:
        return
    if not callable(target):
        raise ResolveError(f"{what} {path!r} is a {type(target).__name__}, expected a callable")
    params = typing.get_args(expected)[0] if typing.get_args(expected) else ...
    if params is ...:
        return
    try:
        inspect.signature(target).bind(*([None] * len(params)))
    except TypeError:
        raise ResolveError(f"{what} {path!r} cannot be called with {len(params)} positional "
                           f"argument(s) as its hook expects: signature is "
                           f"{inspect.signature(target)}") from None
    except ValueError:
        return  # builtins without an introspectable signature: trust them
