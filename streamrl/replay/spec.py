"""`--staleness SPEC`: a staleness policy on the command line, in one of two forms.

    MaxLag,max_lag=0                              a class of streamrl.staleness, then its options
    streamrl.staleness:ImportanceWeighted,decay=0.9,max_lag=4     or any policy by import path
    Synchronous                                   a policy without options
    my_policy.toml                                a TOML file with a [staleness] section, exactly
                                                  as in a recipe (policy = "...", options = {...})

Option values are TOML values (`0`, `0.9`, `true`, `"drop"`); a bare word is taken as a string
(`on_stale=drop`). The policy is built (and so validated) here, with the error naming the spec.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from streamrl.replay.runs import ReplayError
from streamrl.staleness import StalenessConfig, StalenessError, build_policy

BUILTIN_MODULE = "streamrl.staleness"


def parse_staleness(spec: str) -> StalenessConfig:
    """The `StalenessConfig` a spec names; raises ReplayError saying what is wrong with it."""
    config = _from_file(Path(spec)) if spec.endswith(".toml") else _from_words(spec)
    try:
        build_policy(config)
    except StalenessError as error:
        raise ReplayError(f"--staleness {spec!r}: {error}") from None
    return config


def _from_file(path: Path) -> StalenessConfig:
    class File(msgspec.Struct):
        staleness: StalenessConfig

    try:
        return msgspec.toml.decode(path.read_bytes(), type=File).staleness
    except FileNotFoundError:
        raise ReplayError(f"--staleness {str(path)!r}: no such file") from None
    except (msgspec.ValidationError, msgspec.DecodeError) as error:
        raise ReplayError(f"--staleness {str(path)!r}: need a [staleness] section with policy "
                          f"and options, as in a recipe: {error}") from None


def _from_words(spec: str) -> StalenessConfig:
    name, *pairs = [part.strip() for part in spec.split(",")]
    if not name or "=" in name:
        raise ReplayError(f"--staleness {spec!r}: start with the policy, e.g. "
                          "'MaxLag,max_lag=0' or 'Synchronous'")
    policy = name if ":" in name else f"{BUILTIN_MODULE}:{name}"
    options: dict[str, Any] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key.strip() or not value.strip():
            raise ReplayError(f"--staleness {spec!r}: {pair!r} is not OPTION=VALUE")
        if key.strip() in options:
            raise ReplayError(f"--staleness {spec!r}: option {key.strip()!r} given twice")
        options[key.strip()] = _value(value.strip())
    return StalenessConfig(policy=policy, options=options)


def _value(text: str) -> Any:
    try:
        return msgspec.toml.decode(f"v = {text}")["v"]
    except msgspec.DecodeError:
        return text  # a bare word: a string option such as on_stale=drop
