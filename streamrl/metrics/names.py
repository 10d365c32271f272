"""Every metric a streamrl component exports, by name: the one list the endpoints serve
(streamrl/metrics/endpoint.py), the Grafana dashboard queries (compose/grafana/, checked against
this list by tests/metrics/test_dashboard.py) and docs/observability.md describes.

Names follow Prometheus conventions: `streamrl_<component>_<what>_<unit>`, counters end in
`_total`, durations are in seconds. Every sample carries the labels `run` (the run id) and
`component` (`trainer`, `producer-0`, ...).
"""

from __future__ import annotations

from typing import Literal

import msgspec


class Metric(msgspec.Struct, frozen=True):
    name: str
    kind: Literal["gauge", "counter"]
    help: str


TRAINER = (
    Metric("streamrl_trainer_version", "gauge", "newest weight version committed"),
    Metric("streamrl_trainer_steps_total", "counter", "optimizer steps committed"),
    Metric("streamrl_trainer_step_seconds", "gauge", "the last step's learner time"),
    Metric("streamrl_trainer_train_tokens_total", "counter", "tokens trained on"),
    Metric("streamrl_trainer_model_tflops", "gauge",
           "achieved model TFLOP/s of the last step (6 x parameters x tokens / step time)"),
    Metric("streamrl_trainer_mfu", "gauge",
           "model FLOPs utilization of the last step; only where the peak is known"),
    Metric("streamrl_trainer_weight_publish_seconds", "gauge",
           "the last version's copy out to the weight transport (the trainer's critical path)"),
    Metric("streamrl_trainer_weight_digest_seconds", "gauge",
           "the last version's digest, computed off the critical path"),
    Metric("streamrl_trainer_consumer_lag_records", "gauge",
           "trajectory records in the log that the trainer has not committed yet"),
    Metric("streamrl_trainer_staleness_mean", "gauge", "mean lag (versions) of the last batch"),
    Metric("streamrl_trainer_staleness_max", "gauge", "largest lag (versions) of the last batch"),
    Metric("streamrl_trainer_reward_mean", "gauge", "mean reward of the last batch"),
    Metric("streamrl_trainer_loss", "gauge", "the last step's loss"),
    Metric("streamrl_trainer_samples_trained_total", "counter", "samples trained on"),
    Metric("streamrl_trainer_samples_rejected_total", "counter",
           "samples the staleness policy dropped or requeued"),
)

PRODUCER = (
    Metric("streamrl_producer_generated_tokens_total", "counter",
           "response tokens of published samples (rate(): tokens/s)"),
    Metric("streamrl_producer_samples_published_total", "counter",
           "samples written to the trajectories stream"),
    Metric("streamrl_producer_groups_filtered_total", "counter",
           "groups the recipe's filter rejected (e.g. zero variance)"),
    Metric("streamrl_producer_throttled_total", "counter",
           "admission-control stops (staleness: the producer is ahead of the trainer)"),
    Metric("streamrl_producer_queue_depth", "gauge", "prompts read but not started"),
    Metric("streamrl_producer_groups_in_flight", "gauge", "groups generating or publishing"),
    Metric("streamrl_producer_kv_cache_usage", "gauge",
           "fraction of the engine's KV-cache blocks in use (embedded engine only)"),
    Metric("streamrl_producer_weight_version", "gauge", "weight version the engine samples with"),
    Metric("streamrl_producer_staleness_versions", "gauge",
           "versions the engine's weights are behind the trainer's newest"),
    Metric("streamrl_producer_weight_sync_seconds", "gauge", "the last weight load's time"),
)

BY_NAME = {m.name: m for m in (*TRAINER, *PRODUCER)}
