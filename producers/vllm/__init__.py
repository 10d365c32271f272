"""The vLLM rollout adapter: a running vLLM server as the producers' engine.

    from streamrl.producers.vllm import VLLMConfig, VLLMEngine
    engine = VLLMEngine.from_checkpoint(ckpt, VLLMConfig(url="http://127.0.0.1:8000"))

`engine.py` (the `Engine` protocol over the server), `convert.py` (vLLM's token-in/token-out
JSON into our per-token columns: ids, logprobs, versions from weight-version spans),
`weights.py` (update sessions: a file the server reloads in place, or an NCCL broadcast),
`http.py` (the JSON client), `server.py` (start and stop a local server). The request
bookkeeping and the JSON client's core are shared with the SGLang adapter (`producers/remote/`).
What ran against a real server and what did not: docs/vllm.md.
"""

from streamrl.producers.vllm.convert import VLLMResponseError
from streamrl.producers.vllm.engine import VLLMConfig, VLLMEngine, engine_from_options
from streamrl.producers.vllm.http import VLLMHTTP, VLLMError
from streamrl.producers.vllm.server import VLLMServer
from streamrl.producers.vllm.weights import NCCLWeightSender, PauseMode

__all__ = ["VLLMHTTP", "NCCLWeightSender", "PauseMode", "VLLMConfig", "VLLMEngine", "VLLMError",
           "VLLMResponseError", "VLLMServer", "engine_from_options"]
