"""The trainer's backends by name (`trainer.backend`): the learner class each one builds.

    learner = learner_class(setup).from_checkpoint(path, setup)

megatron-core itself is imported only when a megatron learner is built (megatron/model.py
imports it inside its functions), so naming the class here costs nothing on a CPU machine.
"""

from __future__ import annotations

from streamrl.consumers.trainer.learner import Learner, LearnerSetup
from streamrl.consumers.trainer.megatron.model import MegatronLearner

BACKENDS: dict[str, type[Learner]] = {"torch": Learner, "megatron": MegatronLearner}


def learner_class(setup: LearnerSetup) -> type[Learner]:
    """The learner class `setup.trainer.backend` names."""
    return BACKENDS[setup.trainer.backend]
