"""A producer's Prometheus metrics (names in streamrl/metrics/names.py), read from the live
`Producer` at scrape time: its committed counters, queue, groups, the engine's weight version and
KV-cache blocks, the last weight load. Off unless `[metrics]` asks for it (docs/observability.md).
"""

from __future__ import annotations

from collections.abc import Callable

from streamrl.metrics import PRODUCER, MetricsEndpoint, serve_component
from streamrl.producers.engine import TorchEngine
from streamrl.producers.worker import Producer


def producer_reader(producer: Producer) -> Callable[[], dict[str, float]]:
    def read() -> dict[str, float]:
        p = producer
        engine_version = p.engine.version
        values = {
            "streamrl_producer_generated_tokens_total": p.num_generated_tokens,
            "streamrl_producer_samples_published_total": p.num_published_samples,
            "streamrl_producer_groups_filtered_total": p.num_filtered_groups,
            "streamrl_producer_throttled_total": p.num_throttled,
            "streamrl_producer_queue_depth": len(p.queue),
            "streamrl_producer_groups_in_flight": len(p.groups),
            "streamrl_producer_weight_version": engine_version,
            "streamrl_producer_staleness_versions": max(
                0, p.weights.trainer_version - engine_version),
        }
        if p.weights.last_load_s is not None:
            values["streamrl_producer_weight_sync_seconds"] = p.weights.last_load_s
        if isinstance(p.engine, TorchEngine):  # a remote engine's cache is its own
            pool = p.engine.scheduler.pool
            values["streamrl_producer_kv_cache_usage"] = 1 - pool.num_free / max(
                1, pool.num_blocks - 1)  # block 0 is scratch, never free
        return {name: float(v) for name, v in values.items()}
    return read


def serve_producer_metrics(producer: Producer) -> MetricsEndpoint | None:
    """Producer `index`'s endpoint where the run's `[metrics]` section says, or None."""
    ctx = producer.ctx
    return serve_component(ctx.config.metrics, "producer", producer.index, run_id=ctx.run_id,
                           run_dir=ctx.run_dir, metrics=PRODUCER, read=producer_reader(producer))
