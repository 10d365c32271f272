"""Replaying recorded runs: bit-exact reproduction (`exact.py`), counterfactual re-training
under another staleness policy or loss (`counterfactual.py`), and side-by-side comparison of runs
(`compare.py`), and a run as a folder of its own, `streamrl export` / `import` (`archive/`).
See docs/replay.md."""

from streamrl.replay.runs import ReplayError

__all__ = ["ReplayError"]
