"""The recipe's `[metrics]` and `[logging]` sections: where each component serves its Prometheus
metrics (streamrl/metrics/), and the loggers the run driver writes beside TensorBoard
(streamrl/run/loggers.py). docs/observability.md is the user's view.

    [metrics]
    port = 9400                      # trainer 9400, producer i 9401 + i
    [logging]
    wandb = { project = "streamrl", mode = "offline" }
"""

from __future__ import annotations

import os
from typing import Literal

import msgspec

PORT_ENV = "STREAMRL_METRICS_PORT"
"""This process's exact metrics port, over the recipe's (compose gives every container the same
one: each has its own network namespace). Setting it turns the endpoint on."""
HOST_ENV = "STREAMRL_METRICS_HOST"
"""The address the endpoint binds, over `[metrics] host` (compose: 0.0.0.0, for Prometheus)."""

ROLE_OFFSETS = {"trainer": 0, "producer": 1}
"""A component's port is `port + ROLE_OFFSETS[role] + index`: the trainer at `port`, producer i
at `port + 1 + i`, so one machine's processes never ask for the same port."""


class MetricsSection(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    port: int | None = None
    """Base port of the Prometheus endpoints (`/metrics`): the trainer serves on `port`,
    producer i on `port + 1 + i`. Unset: no endpoint (unless STREAMRL_METRICS_PORT is set)."""
    host: str = "127.0.0.1"
    """Address the endpoints bind; "0.0.0.0" lets another host (a Prometheus server) scrape."""

    def __post_init__(self) -> None:
        if self.port is not None and not 1024 <= self.port <= 65000:
            raise ValueError(f"metrics.port ({self.port}) must be in [1024, 65000]: producers "
                             "take the ports above it; or leave it unset for no endpoint")

    def address(self, role: Literal["trainer", "producer"], index: int = 0
                ) -> tuple[str, int] | None:
        """(host, port) for component `role` number `index`, or None when metrics are off.
        STREAMRL_METRICS_PORT / STREAMRL_METRICS_HOST override the recipe for this process."""
        host = os.environ.get(HOST_ENV) or self.host
        if os.environ.get(PORT_ENV):
            return host, int(os.environ[PORT_ENV])
        if self.port is None:
            return None
        return host, self.port + ROLE_OFFSETS[role] + index


class WandbConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    project: str
    """The W&B project the run is logged to; the W&B run id is the streamrl run id."""
    entity: str | None = None
    """The W&B team or user (default: the logged-in user's)."""
    mode: Literal["online", "offline", "disabled"] | None = None
    """"offline" writes the run under `runs/<run_id>/wandb/` for a later `wandb sync`; unset:
    W&B's own default (the WANDB_MODE environment variable, else online)."""


class LoggingSection(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    wandb: WandbConfig | None = None
    """Also log the run's scalars to Weights & Biases (the `wandb` package), the same ones
    TensorBoard gets, with the recipe as the W&B run's config."""
