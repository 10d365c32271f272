"""What a producer needs of a rollout engine: the `Engine` protocol, and the recipe hook that builds
one (`rollout.engine_factory`, an `EngineFactory`).

    engine = factory(checkpoint, options)          # or the embedded TorchEngine (the default)
    engine.add_request(GenerationRequest(request_id="g0", prompt_tokens=[...], params=...))
    while engine.has_unfinished():
        for result in engine.step():                # requests that finished since the last step
            publish(result)
        engine.load_weights(tensors, version)       # only here: between steps
    engine.close()

Three engines implement it: `streamrl.producers.engine.TorchEngine` (embedded, continuous
batching over streamrl's own model), `streamrl.producers.sglang.SGLangEngine` and
`streamrl.producers.vllm.VLLMEngine` (running SGLang and vLLM servers). One conformance suite runs
against all of them (tests/engine/test_engine_conformance.py); a new backend passes it before a
producer drives it. The request and result types, and the seed, logprob and
routing-record conventions every engine follows, are in `streamrl.hooks.generation`.

Threads. The producer drives an engine from one asyncio event loop (`EngineClient` in
producers/rollout.py): `step()` runs on a worker thread, and while it runs the loop may call
`add_request` (a rollout task asking for a generation) and read `version` / `num_experts`.
Every other call (`load_weights`, `abort`, `close`) is made between steps, never concurrently with
`step()` or with each other.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from streamrl.hooks.generation import GenerationRequest, GenerationResult


@runtime_checkable
class Engine(Protocol):
    """A step-driven generation engine. `isinstance(x, Engine)` checks that the members exist,
    not their behaviour; the conformance suite checks the behaviour."""

    @property
    def version(self) -> int:
        """The weight version that samples the next tokens: the one given at construction, then
        the last `load_weights` version. Only `load_weights` changes it."""
        ...

    @property
    def num_experts(self) -> int | None:
        """Routed experts per MoE layer of the served model, recorded next to the routing
        (`GenerationResult.routed_experts`); None for a dense model, whose results carry no
        routing. Fixed for the engine's life."""
        ...

    def add_request(self, request: GenerationRequest) -> None:
        """Queue a request; it starts as soon as the engine has room, and some later `step()`
        returns its result exactly once. Raises `ValueError`, queuing nothing, for a request id
        already among the unfinished requests or a prompt the engine cannot serve (empty, too
        long, token ids outside the vocabulary). May be called while `step()` runs (module
        docstring)."""
        ...

    def has_unfinished(self) -> bool:
        """True from `add_request` until every request has been returned by `step()`."""
        ...

    def step(self) -> list[GenerationResult]:
        """Advance generation and return the requests that finished (stop, length or abort)
        since the previous call, possibly none. Blocks for a bounded time: one decoding step
        of the embedded engine, at most the poll interval of a remote one. Calling it while
        `has_unfinished()` eventually returns every request; a result has at most
        `max_new_tokens` response tokens, ends in a stop token exactly when `finish_reason` is
        "stop", and carries one logprob, one version and (MoE) one routing row per token.
        Errors of a remote engine are raised here; the producer stops on them."""
        ...

    def abort(self, request_id: str) -> bool:
        """Stop an unfinished request: a later `step()` returns it, exactly once, with
        `finish_reason` "abort" and the tokens sampled so far (none if it never started). A
        remote engine may return it with its own finish reason instead, when it finished before
        the abort took effect. False, changing nothing, if no unfinished request has this id
        (never added, or already returned)."""
        ...

    def load_weights(self, state_dict: Mapping[str, Tensor], version: int) -> None:
        """Replace the served weights (HF names, as `streamrl.models.checkpoint`) between steps
        and make `version` current. Requests in flight continue; each of their tokens is stamped
        (`response_versions`) with the version whose weights sampled it. Raises `ValueError` if
        `version` is not newer than `self.version`; on any error `self.version` is unchanged."""
        ...

    def close(self) -> None:
        """Release what the engine holds (threads, connections, device memory). Unfinished
        requests are dropped, never returned: `has_unfinished()` is False afterwards and
        `add_request` raises `RuntimeError`. Idempotent: a second call does nothing."""
        ...


EngineFactory = Callable[[Path, dict[str, Any]], Engine]
"""The recipe hook `rollout.engine_factory`: `(checkpoint, rollout.engine_options) -> Engine`,
e.g. "streamrl.producers.sglang:engine_from_options". The checkpoint is the run's initial
weights (the engine serves them as version 0); options are the recipe's, unvalidated: the
factory checks them and raises `ValueError` naming the bad field."""
