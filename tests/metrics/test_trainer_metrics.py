"""The trainer's metrics from a committed step: durations in seconds, totals that add up, and
MFU only where the device's peak is known (6 x parameters x tokens / step time / peak)."""

from __future__ import annotations

import pytest
import torch

from streamrl.consumers.trainer.metrics import TrainerMetrics, peak_tflops
from streamrl.schemas import TrainStep


def _step(version: int, **metrics: float) -> TrainStep:
    return TrainStep(run_id="r", step=version, version=version, metrics=metrics)


def test_steps_add_up_and_mfu_needs_a_peak() -> None:
    metrics = TrainerMetrics(num_params=1_000_000_000, peak=100.0)
    metrics.values["streamrl_trainer_consumer_lag_records"] = 7.0  # kept across steps
    for version in (1, 2):
        metrics.on_step(_step(version, step_ms=2000.0, train_tokens=10_000.0, num_samples=8.0,
                              num_rejected=2.0, weights_copy_ms=50.0, reward_mean=0.5))
    values = metrics.read()
    assert values["streamrl_trainer_version"] == 2.0
    assert values["streamrl_trainer_steps_total"] == 2.0
    assert values["streamrl_trainer_samples_trained_total"] == 16.0
    assert values["streamrl_trainer_samples_rejected_total"] == 4.0
    assert values["streamrl_trainer_train_tokens_total"] == 20_000.0
    assert values["streamrl_trainer_step_seconds"] == 2.0
    assert values["streamrl_trainer_weight_publish_seconds"] == pytest.approx(0.05)
    # 6 * 1e9 * 1e4 / 2 s = 3e13 FLOP/s = 30 TFLOP/s, of a 100 TFLOP/s peak
    assert values["streamrl_trainer_model_tflops"] == pytest.approx(30.0)
    assert values["streamrl_trainer_mfu"] == pytest.approx(0.3)
    assert values["streamrl_trainer_consumer_lag_records"] == 7.0
    assert "streamrl_trainer_loss" not in values  # not in the step's metrics: not exported
    unknown = TrainerMetrics(num_params=1_000_000_000, peak=None)
    unknown.on_step(_step(1, step_ms=2000.0, train_tokens=10_000.0))
    assert "streamrl_trainer_mfu" not in unknown.read()


def test_the_peak_comes_from_the_environment_or_a_known_gpu(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert peak_tflops(torch.device("cpu")) is None
    monkeypatch.setenv("STREAMRL_PEAK_TFLOPS", "123.5")
    assert peak_tflops(torch.device("cpu")) == 123.5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_an_h100_or_h200_has_a_known_peak() -> None:
    name = torch.cuda.get_device_name(0)
    if "H100" not in name and "H200" not in name:
        pytest.skip(f"not an H100/H200: {name}")
    assert peak_tflops(torch.device("cuda", 0)) == 989.0
