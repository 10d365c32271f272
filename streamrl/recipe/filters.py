"""`rollout.filter` short names: name -> import path of a `SampleFilter` (producers/filters.py).
`resolve_hooks` resolves a name through this table; an import path works as it is."""

from __future__ import annotations

FILTERS: dict[str, str] = {
    "zero_variance": "streamrl.producers.filters:zero_variance",
}
"""DAPO's dynamic sampling: groups whose rewards are all equal are rejected ("zero_variance")."""
