"""The trainer's Prometheus metrics (names in streamrl/metrics/names.py): each committed
`TrainStep` updates them (`TrainerLoop.on_commit`), and a small task refreshes the consumer lag
from the log every `every_s` seconds. Off unless `[metrics]` asks for it (docs/observability.md).

MFU is 6 x parameters x tokens / step time over the device's dense bf16 peak: a lower bound that
leaves out attention's quadratic term, and only where the peak is known (STREAMRL_PEAK_TFLOPS,
or a GPU in `PEAK_TFLOPS`); on CPU only the achieved TFLOP/s is exported.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

import torch

from streamrl.log import Log
from streamrl.metrics import TRAINER, serve_component
from streamrl.recipe.context import TRAINER_GROUP, RunContext
from streamrl.schemas import TrainStep

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0, "L40S": 362.0}
"""Dense bf16 tensor-core peak by GPU name (vendor data sheets, SXM parts, no sparsity)."""


def peak_tflops(device: torch.device) -> float | None:
    if os.environ.get("STREAMRL_PEAK_TFLOPS"):
        return float(os.environ["STREAMRL_PEAK_TFLOPS"])
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for gpu, peak in PEAK_TFLOPS.items() if gpu in name), None)


class TrainerMetrics:
    def __init__(self, num_params: int, peak: float | None) -> None:
        self.num_params, self.peak = num_params, peak
        self.values: dict[str, float] = {}
        self.totals = {"streamrl_trainer_steps_total": 0.0,
                       "streamrl_trainer_train_tokens_total": 0.0,
                       "streamrl_trainer_samples_trained_total": 0.0,
                       "streamrl_trainer_samples_rejected_total": 0.0}

    def on_step(self, step: TrainStep) -> None:
        m = step.metrics
        t = self.totals
        t["streamrl_trainer_steps_total"] += 1
        t["streamrl_trainer_train_tokens_total"] += m.get("train_tokens", 0.0)
        t["streamrl_trainer_samples_trained_total"] += m.get("num_samples", 0.0)
        t["streamrl_trainer_samples_rejected_total"] += m.get("num_rejected", 0.0)
        values = {"streamrl_trainer_version": float(step.version)}
        for name, key, scale in (("step_seconds", "step_ms", 1e-3),
                                 ("weight_publish_seconds", "weights_copy_ms", 1e-3),
                                 ("weight_digest_seconds", "weights_digest_ms", 1e-3),
                                 ("staleness_mean", "staleness_mean", 1.0),
                                 ("staleness_max", "staleness_max", 1.0),
                                 ("reward_mean", "reward_mean", 1.0), ("loss", "loss", 1.0)):
            if key in m:
                values[f"streamrl_trainer_{name}"] = m[key] * scale
        step_s, tokens = m.get("step_ms", 0.0) * 1e-3, m.get("train_tokens", 0.0)
        if step_s > 0 and tokens > 0:
            tflops = 6.0 * self.num_params * tokens / step_s / 1e12
            values["streamrl_trainer_model_tflops"] = tflops
            if self.peak:
                values["streamrl_trainer_mfu"] = tflops / self.peak
        self.values = values | {k: v for k, v in self.values.items()
                                if k == "streamrl_trainer_consumer_lag_records"}

    def read(self) -> dict[str, float]:
        return {**self.values, **self.totals}

    async def follow_lag(self, log: Log, ctx: RunContext, every_s: float = 2.0) -> None:
        """Records in the trajectories stream past the trainer's committed position, refreshed
        until cancelled."""
        stream = ctx.streams.trajectories
        while True:
            end = await log.end_offset(stream, 0)
            committed = await log.committed(TRAINER_GROUP, stream, 0) or 0
            self.values["streamrl_trainer_consumer_lag_records"] = float(max(0, end - committed))
            await asyncio.sleep(every_s)


@contextlib.asynccontextmanager
async def trainer_metrics(log: Log, ctx: RunContext, model: torch.nn.Module
                          ) -> AsyncIterator[TrainerMetrics | None]:
    """The trainer's endpoint for the run's `[metrics]` section, or None when it is off; stopped
    (and its lag task cancelled) on exit."""
    params = list(model.parameters())
    device = params[0].device if params else torch.device("cpu")
    metrics = TrainerMetrics(sum(p.numel() for p in params), peak_tflops(device))
    endpoint = serve_component(ctx.config.metrics, "trainer", 0, run_id=ctx.run_id,
                               run_dir=ctx.run_dir, metrics=TRAINER, read=metrics.read)
    if endpoint is None:
        yield None
        return
    lag = asyncio.create_task(metrics.follow_lag(log, ctx))
    try:
        yield metrics
    finally:
        lag.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await lag
        endpoint.stop()
