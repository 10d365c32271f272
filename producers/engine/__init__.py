"""The embedded torch rollout engine: continuous batching over streamrl's own model.

    engine = TorchEngine(load_checkpoint(path), EngineConfig(max_batch_size=8, max_seq_len=1024))
    results = engine.generate([GenerationRequest(request_id="r0", prompt_tokens=[1, 2, 3],
                                                 params=SamplingParams(temperature=0.7))])

Step-level API for producers: `add_request`, `step`, `abort`, `has_unfinished`, and
`load_weights(state_dict, version)` between steps. See `engine.py` for the step's order and the
in-flight weight update semantics, and `streamrl.hooks.generation` (the request and result types)
for seeds, the logprob convention and which forward pass each recorded MoE routing row comes
from. `TorchEngine` satisfies `streamrl.hooks.engine.Engine`, what a producer drives.
"""

from streamrl.hooks.generation import (
    GenerationRequest,
    GenerationResult,
    SamplingParams,
    Timing,
    seed_from_request_id,
)
from streamrl.producers.engine.engine import TorchEngine
from streamrl.producers.engine.sampling import sample
from streamrl.recipe.engine import EngineConfig

__all__ = [
    "EngineConfig",
    "GenerationRequest",
    "GenerationResult",
    "SamplingParams",
    "Timing",
    "TorchEngine",
    "sample",
    "seed_from_request_id",
]
