"""Extension points are plain callables named by import path: `"package.module:attribute"`.

    reward_fn = resolve("recipes.arithmetic.task:reward", RewardFn)

Each hook's signature is declared next to the knob that names it (producers/hooks.py for rewards,
filters and rollouts; consumers/trainer for advantages, losses and train-step hooks). `resolve`
fails at config load, with a message that says what to fix, never in the middle of a run.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any


class HookError(ValueError):
    """An import path that does not name a usable callable."""


def resolve(path: str, expected: Any = None, *, what: str = "hook") -> Any:
    """Import `module:attribute` (dots inside the attribute walk into it). `expected` is the
    hook's type (a Callable alias or a class), used in error messages and, for classes, checked."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise HookError(f"{what} {path!r} is not an import path: write 'package.module:name'")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as error:
        raise HookError(
            f"{what} {path!r}: cannot import module {module_name!r} ({error})"
        ) from None
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise HookError(f"{what} {path!r}: module {module_name!r} has no attribute "
                            f"{attr!r}") from None
    if isinstance(expected, type):
        if inspect.isclass(target):
            ok = issubclass(target, expected)
        else:
            ok = isinstance(target, expected)
        if not ok:
            found = target.__name__ if inspect.isclass(target) else type(target).__name__
            raise HookError(f"{what} {path!r} is {found}, expected {expected.__name__}")
    elif not callable(target):
        raise HookError(f"{what} {path!r} is a {type(target).__name__}, not callable; expected "
                        f"{getattr(expected, '__name__', None) or expected}")
    return target
