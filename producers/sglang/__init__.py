"""The SGLang rollout adapter: a running SGLang server as the producers' engine.

    from streamrl.producers.sglang import SGLangConfig, SGLangEngine
    engine = SGLangEngine.from_checkpoint(ckpt, SGLangConfig(url="http://127.0.0.1:30000"))

`engine.py` (the engine surface the rollout worker drives), `convert.py` (SGLang's JSON into our
per-token columns: logprobs, versions from weight-version spans, routed experts), `weights.py`
(weight update sessions: colocated tensors, or NCCL broadcast to disaggregated servers),
`http.py` (the JSON client). The request bookkeeping and the JSON client's core are shared with
the vLLM adapter (`producers/remote/`). What was and was not run against a real server:
docs/sglang.md.
"""

from streamrl.producers.sglang.convert import SGLangResponseError
from streamrl.producers.sglang.engine import SGLangConfig, SGLangEngine, engine_from_options
from streamrl.producers.sglang.http import SGLangError, SGLangHTTP
from streamrl.producers.sglang.weights import DistributedWeightSender, PauseMode

__all__ = ["DistributedWeightSender", "PauseMode", "SGLangConfig", "SGLangEngine", "SGLangError",
           "SGLangHTTP", "SGLangResponseError", "engine_from_options"]
