"""msgpack encoding of control events, one tagged union and one typed decoder per stream.

Decoders are built once at import (msgspec compiles the union's dispatch), and `decode_event`
turns every failure into `EventDecodeError`: a raw msgspec exception never reaches a consumer loop.
"""

from __future__ import annotations

import re
from typing import Literal, TypeAlias

import msgspec

from streamrl.schemas.errors import DecodeError, EventDecodeError
from streamrl.schemas.events import (
    BatchFormed,
    CheckpointSaved,
    DeadLetter,
    EvalResult,
    Event,
    ProducerJoined,
    ProducerLeft,
    Prompt,
    Rejected,
    RunStarted,
    ScaleRequested,
    TrainStep,
    WeightVersionAnnounced,
    WeightVersionLoaded,
)
from streamrl.schemas.limits import MiB

PromptStreamEvent: TypeAlias = Prompt
WeightsStreamEvent: TypeAlias = WeightVersionAnnounced
EventsStreamEvent: TypeAlias = (
    RunStarted | WeightVersionLoaded | BatchFormed | TrainStep | CheckpointSaved
    | ProducerJoined | ProducerLeft | Rejected | ScaleRequested | EvalResult
)
DlqEvent: TypeAlias = DeadLetter

StreamKind = Literal["prompts", "weights", "events", "dlq"]
STREAM_UNIONS: dict[str, object] = {
    "prompts": PromptStreamEvent,
    "weights": WeightsStreamEvent,
    "events": EventsStreamEvent,
    "dlq": DlqEvent,
}
_DECODERS = {kind: msgspec.msgpack.Decoder(union) for kind, union in STREAM_UNIONS.items()}
_ENCODER = msgspec.msgpack.Encoder()

MAX_EVENT_BYTES = 16 * MiB
# A weight announcement may carry its tensors inline (a LoRA adapter): up to a Kafka record.
MAX_WEIGHTS_EVENT_BYTES = 64 * MiB
# A dead letter carries the rejected message, which may be a trajectory batch of up to 256 MiB.
MAX_DLQ_EVENT_BYTES = 257 * MiB
_PATH = re.compile(r" - at `(\$[^`]*)`$")


def encode_event(event: Event) -> bytes:
    """msgpack bytes of `event`, tag included. Raises TypeError for a non-event."""
    if not isinstance(event, Event):
        raise TypeError(f"encode_event takes a schemas Event, got {type(event)!r}")
    return _ENCODER.encode(event)


def decode_event(data: bytes | bytearray | memoryview, stream_kind: StreamKind, *,
                 max_bytes: int | None = None) -> Event:
    """Decode one event of the union for `stream_kind` ("prompts", "weights", "events", "dlq").

    Unknown fields are ignored. Raises `EventDecodeError` for oversized or malformed bytes, an
    unknown tag or a tag that belongs to another stream, a field of the wrong type, or a value that
    breaks a rule (`reason_code` from the event's own check). Dispatch on the result with `match`.
    """
    decoder = _DECODERS.get(stream_kind)
    if decoder is None:
        raise ValueError(f"unknown stream kind {stream_kind!r}; one of {sorted(_DECODERS)}")
    if not isinstance(data, bytes | bytearray | memoryview):
        raise EventDecodeError(f"expected bytes, got {type(data).__name__}", where="message",
                               reason_code="not_bytes")
    limit = max_bytes or {"dlq": MAX_DLQ_EVENT_BYTES, "weights": MAX_WEIGHTS_EVENT_BYTES}.get(
        stream_kind, MAX_EVENT_BYTES)
    size = memoryview(data).nbytes
    if size > limit:
        raise EventDecodeError(f"event is {size} bytes, limit {limit}", where="message",
                               reason_code="too_large")
    try:
        event: Event = decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise _from_validation(exc, stream_kind) from exc
    except (msgspec.DecodeError, ValueError, TypeError, RecursionError) as exc:
        raise EventDecodeError(f"not a msgpack event: {exc}", where="message",
                               reason_code="malformed") from exc
    return event


def _from_validation(exc: msgspec.ValidationError, stream_kind: str) -> EventDecodeError:
    cause = exc.__cause__
    if isinstance(cause, DecodeError):  # raised by an event's __post_init__: keep its code
        return EventDecodeError(cause.what, where=cause.where, reason_code=cause.reason_code)
    message = str(exc)
    match = _PATH.search(message)
    what = _PATH.sub("", message)
    where = match.group(1) if match else "$"
    if where == "$.type":
        return EventDecodeError(f"{what}: not an event of the "
                                f"{stream_kind!r} stream", where=where, reason_code="unknown_tag")
    missing = message.startswith("Object missing required field")
    code = "missing_field" if missing else "invalid_field"
    return EventDecodeError(what, where=where, reason_code=code)
