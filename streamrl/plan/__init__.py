"""The planner: parameters, memory per GPU and traffic of a recipe's placement, computed from an
HF config.json alone (no weights). `streamrl plan` (streamrl/commands/plan.py) prints it.

    shape.py      config.json -> ModelShape, per model_type
    params.py     total / active parameters, per layer and by how they are sharded
    memory.py     trainer (megatron layout) and engine memory per GPU; the formulas
    placement.py  a recipe on N GPUs: the plan, and what overflows
"""

from streamrl.plan.memory import (
    EngineMemory,
    Parallel,
    TrainerMemory,
    engine_memory,
    torch_learner_memory,
    trainer_memory,
)
from streamrl.plan.params import ParamCounts, count_params
from streamrl.plan.placement import Plan, make_plan, parse_bytes
from streamrl.plan.shape import ModelShape, read_shape

__all__ = ["EngineMemory", "ModelShape", "Parallel", "ParamCounts", "Plan", "TrainerMemory",
           "count_params", "engine_memory", "make_plan", "parse_bytes", "read_shape",
           "torch_learner_memory", "trainer_memory"]
