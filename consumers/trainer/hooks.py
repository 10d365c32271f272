"""Built-in training-step hooks (the hook type, `TrainStepHook`, is in streamrl/hooks/train.py):
extra metrics computed after each optimizer step, recorded with the step's own metrics in
`TrainStep` (and so in TensorBoard and `streamrl compare`).
"""

from __future__ import annotations

from streamrl.hooks.train import TrainStepInput


def fresh_reward(step: TrainStepInput) -> dict[str, float]:
    """An example hook: nothing but the mean reward of the freshest samples (lag 0)."""
    fresh = [r for r, lag in zip(step.rewards, step.lags, strict=True) if lag <= 0]
    return {"reward_fresh": sum(fresh) / len(fresh)} if fresh else {}
