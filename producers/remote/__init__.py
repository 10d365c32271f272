"""What the server-backed engines share: a running inference server behind the `Engine` protocol.

    class MyEngine(ServerEngine[MyConfig]):   # submit a generation, parse its answer,
        ...                                   # abort, push weights: the server's own calls

`engine.py` (`ServerEngineConfig`, the fields and checks every server adapter has, and
`ServerEngine`, pending requests as futures of blocking HTTP calls, collected by `step()`),
`http.py` (`JSONHTTP`, the JSON-over-urllib client on a thread pool, `ServerError` for a
refused or failed call and `ResponseError` for an answer of the wrong shape). The
adapters are `producers/sglang/` and `producers/vllm/`; each keeps its endpoints, JSON
conversion and weight updates.
"""

from streamrl.producers.remote.engine import (
    Answer,
    PauseMode,
    Pending,
    ServerEngine,
    ServerEngineConfig,
)
from streamrl.producers.remote.http import JSONHTTP, ResponseError, ServerError

__all__ = ["JSONHTTP", "Answer", "PauseMode", "Pending", "ResponseError", "ServerEngine",
           "ServerEngineConfig", "ServerError"]
